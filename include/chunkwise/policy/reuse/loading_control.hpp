// CacheBlend's loading controller (Yao et al., EuroSys'25, section 5.3), in its load-or-compute
// form: a chunk is worth loading from a tier only when moving its KV into the cache is expected to
// take less than the prefill it saves. The paper compares T_load = KV bytes / tier bandwidth with
// T_recompute and picks the cheapest tier that still hides the recompute; here the tiers below the
// device (host RAM, disk) are judged per chunk against computing it, from costs measured online.
// A small model on a fast GPU prefills a 512-token chunk faster than its fp32 KV crosses the host
// link, so without this a host-tier hit makes the prompt slower than no reuse at all.
#pragma once

#include <cstddef>
#include <cstdint>

#include "chunkwise/kv/chunk_store.hpp"

namespace chunkwise {

// Seconds per unit of work; 0 = not measured yet.
struct LoadCosts {
  double prefill_s_per_row = 0;  // a prefill step's time over its rows
  double host_s_per_byte = 0;    // host tier to cache: read, upload, place
  double disk_s_per_byte = 0;    // disk tier to cache: read, decompress, check, place
};

// Whether placing `bytes` of KV from `tier` is expected to beat prefilling the (1 - ratio) share
// of `rows` rows that the placement spares (the rest are recomputed either way). A cost not yet
// measured is measured by trying: the tier's unknown, load; the prefill's unknown (the tier's
// known), compute.
[[nodiscard]] inline bool worth_loading(ChunkTier tier, std::size_t bytes, std::int32_t rows, double ratio,
                                        const LoadCosts& costs) {
  const double per_byte = tier == ChunkTier::kDisk ? costs.disk_s_per_byte : costs.host_s_per_byte;
  if (per_byte <= 0) return true;
  if (costs.prefill_s_per_row <= 0) return false;
  const double spared = static_cast<double>(rows) * (1.0 - ratio) * costs.prefill_s_per_row;
  return static_cast<double>(bytes) * per_byte < spared;
}

// Exponentially weighted means of the observed costs (the first observation sets a mean).
class LoadCostMeter {
 public:
  explicit LoadCostMeter(LoadCosts prior = {}, double weight = 0.25) : costs_(prior), weight_(weight) {}

  void observe_prefill(std::int64_t rows, double seconds) {
    if (rows > 0) update(costs_.prefill_s_per_row, seconds / static_cast<double>(rows));
  }
  void observe_load(ChunkTier tier, std::size_t bytes, double seconds) {
    if (bytes == 0) return;
    update(tier == ChunkTier::kDisk ? costs_.disk_s_per_byte : costs_.host_s_per_byte,
           seconds / static_cast<double>(bytes));
  }
  [[nodiscard]] const LoadCosts& costs() const { return costs_; }

 private:
  void update(double& mean, double sample) const {
    if (!(sample >= 0)) return;  // a clock going backwards (or NaN) is no measurement
    mean = mean > 0 ? mean + weight_ * (sample - mean) : sample;
  }
  LoadCosts costs_;
  double weight_;
};

}  // namespace chunkwise
