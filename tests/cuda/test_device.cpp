// Device discovery: every device reports a name and memory; one past the last is a typed error.
#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/device.hpp"

TEST_CASE("CUDA devices are listed and a bad index is a typed error", "[cuda]") {
  const int n = chunkwise::cuda::device_count();
  REQUIRE(n > 0);
  for (int i = 0; i < n; ++i) {
    const auto info = chunkwise::cuda::device_info(i);
    INFO(info.name);
    CHECK(info.index == i);
    CHECK(!info.name.empty());
    CHECK(info.total_memory > 0);
  }
  try {
    (void)chunkwise::cuda::device_info(n);
    FAIL("device_info(n) did not throw");
  } catch (const chunkwise::Error& e) {
    CHECK(e.code() == chunkwise::ErrorCode::kBackend);
  }
}
