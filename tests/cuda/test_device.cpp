// Runs where a CUDA device is present; elsewhere prints "skipped" and exits 4, which ctest
// reports as skipped (SKIP_RETURN_CODE). The CUDA op tests join this folder with the kernels.
#include <cstdio>

#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/device.hpp"

int main() {
  const int n = chunkwise::cuda::device_count();
  if (n == 0) {
    std::puts("skipped: no CUDA device");
    return 4;
  }
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    const auto info = chunkwise::cuda::device_info(i);
    std::printf("device %d: %s, sm_%d%d, %.1f GiB\n", i, info.name.c_str(), info.compute_major,
                info.compute_minor, static_cast<double>(info.total_memory) / (1 << 30));
    failed += info.index == i && !info.name.empty() && info.total_memory > 0 ? 0 : 1;
  }
  try {
    (void)chunkwise::cuda::device_info(n);  // one past the last: a typed error
    ++failed;
  } catch (const chunkwise::Error& e) {
    failed += e.code() == chunkwise::ErrorCode::kBackend ? 0 : 1;
  }
  std::printf("%d passed, %d failed\n", failed == 0 ? 1 : 0, failed == 0 ? 0 : 1);
  return failed == 0 ? 0 : 1;
}
