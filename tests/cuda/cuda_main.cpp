// Entry point of the CUDA tests: with no CUDA device it prints "skipped" and exits 4, which
// ctest reports as skipped (SKIP_RETURN_CODE); otherwise it runs the Catch2 session.
#include <cstdio>

#if __has_include(<catch2/catch_session.hpp>)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include "chunkwise/cuda/device.hpp"

int main(int argc, char** argv) {
  if (chunkwise::cuda::device_count() == 0) {
    std::puts("skipped: no CUDA device");
    return 4;
  }
  return Catch::Session().run(argc, argv);
}
