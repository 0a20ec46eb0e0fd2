// CacheBlend's loading controller in its load-or-compute form (policy/reuse/loading_control.hpp):
// the decision against measured costs, and the meter's running means.
#include "catch.hpp"
#include "chunkwise/policy/reuse/loading_control.hpp"

#if defined(CATCH_VERSION_MAJOR) && CATCH_VERSION_MAJOR >= 3
using Catch::Approx;  // v2 has it at global scope already
#endif

using namespace chunkwise;

TEST_CASE("worth_loading compares the load time with the prefill time it spares", "[reuse][control]") {
  // 512 rows at 10 us a row: 5.12 ms of prefill; at ratio 0.15, 4.352 ms spared.
  const LoadCosts c{.prefill_s_per_row = 1e-5, .host_s_per_byte = 1e-10, .disk_s_per_byte = 1e-9};
  CHECK(worth_loading(ChunkTier::kHost, 40'000'000, 512, 0.15, c));        // 4.0 ms
  CHECK_FALSE(worth_loading(ChunkTier::kHost, 44'000'000, 512, 0.15, c));  // 4.4 ms
  CHECK(worth_loading(ChunkTier::kHost, 44'000'000, 512, 0.0, c));         // 5.12 ms spared
  CHECK_FALSE(worth_loading(ChunkTier::kDisk, 5'000'000, 512, 0.15, c));   // 5 ms from disk
  CHECK(worth_loading(ChunkTier::kDisk, 4'000'000, 512, 0.15, c));
  CHECK_FALSE(worth_loading(ChunkTier::kHost, 1, 512, 1.0, c));  // ratio 1 spares nothing
  // A cost not measured is measured by trying: the tier's by loading, else the prefill's by computing.
  CHECK(worth_loading(ChunkTier::kHost, 1'000'000'000, 512, 0.15, {.prefill_s_per_row = 1e-5}));
  CHECK(worth_loading(ChunkTier::kDisk, 1, 512, 0.15, {.host_s_per_byte = 1e-12}));
  CHECK(worth_loading(ChunkTier::kHost, 1'000'000'000, 512, 0.15, {}));
  CHECK_FALSE(worth_loading(ChunkTier::kHost, 1, 512, 0.15, {.host_s_per_byte = 1e-12}));
}

TEST_CASE("the load cost meter keeps running means per tier", "[reuse][control]") {
  LoadCostMeter m;
  CHECK(m.costs().prefill_s_per_row == 0);
  m.observe_prefill(1000, 0.004);  // first observation sets the mean
  CHECK(m.costs().prefill_s_per_row == Approx(4e-6));
  m.observe_prefill(1000, 0.008);  // a quarter of the way to 8e-6
  CHECK(m.costs().prefill_s_per_row == Approx(5e-6));
  m.observe_prefill(0, 1.0);    // no rows: nothing
  m.observe_prefill(10, -1.0);  // a clock going backwards: nothing
  CHECK(m.costs().prefill_s_per_row == Approx(5e-6));
  m.observe_load(ChunkTier::kHost, 1'000'000, 0.001);
  m.observe_load(ChunkTier::kDisk, 1'000'000, 0.01);
  m.observe_load(ChunkTier::kDisk, 0, 1.0);
  CHECK(m.costs().host_s_per_byte == Approx(1e-9));
  CHECK(m.costs().disk_s_per_byte == Approx(1e-8));
  // A prior is a starting mean.
  LoadCostMeter p(LoadCosts{.host_s_per_byte = 2e-9});
  p.observe_load(ChunkTier::kHost, 1'000'000, 0.0);
  CHECK(p.costs().host_s_per_byte == Approx(1.5e-9));
}
