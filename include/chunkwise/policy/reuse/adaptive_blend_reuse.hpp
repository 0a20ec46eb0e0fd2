// Selective recompute with a per-chunk ratio from the chunk's predicted deviation: an approximation
// of Cache-Craft (METHODS 2.7; no official code, and the paper's exact formulas were not available
// to us, so this is NOT its scoring). Cache-Craft scores each reused chunk by how much attention its
// tokens paid outside themselves when it was cached (its Cache Context Impact) against how much of
// that context the new prompt shares, recomputes a share proportional to the predicted deviation,
// and computes a chunk normally when reuse would be too wrong. Here:
//   - predicted deviation of a stored chunk of L tokens preceded by P prompt tokens (prefix and
//     earlier chunks): d = (P / L) ln(1 + L / P), d = 0 for P = 0. It is the mean, over the chunk's
//     tokens, of the share of their causal context they did not see when the chunk was cached alone,
//     if attention were uniform over that context: in [0, 1), larger for later and for shorter chunks.
//     The measured statistics Cache-Craft uses (ChunkKv::token_stats) are not readable from a
//     const ChunkStore& without reading the entry; a policy that reads them needs a store accessor.
//   - a chunk with d > skip_deviation is not loaded: it is computed normally;
//   - every other stored chunk is loaded with ratio clamp(base_ratio * d / d_mean, min_ratio,
//     max_ratio), d_mean the token-weighted mean d of the loaded chunks: the same recompute budget
//     as BlendReuse at ratio base_ratio (before the bounds), moved to the chunks predicted to
//     deviate most. When d_mean is 0 every loaded chunk gets min_ratio. base_ratio 1 recomputes every
//     row of every loaded chunk (ratio 1, the bounds do not apply): a full prefill, bit for bit.
// min_tokens and check_layer are as in BlendReuse. The rows recomputed inside a chunk are still
// chosen by the backend's deviation at check_layer, not from stored statistics.
#pragma once

#include <cstdint>

#include "chunkwise/policy/reuse/reuse_plan.hpp"

namespace chunkwise {

struct AdaptiveBlendReuseParams {
  double base_ratio = 0.15;      // token-weighted mean ratio before the bounds, in [0, 1]
  double min_ratio = 0.05;       // bounds: 0 <= min_ratio <= max_ratio <= 1 (ours, not the paper's)
  double max_ratio = 0.6;        //
  double skip_deviation = 0.95;  // in [0, 1]; 1 never skips (d < 1)
  std::int32_t min_tokens = 256;
  int check_layer = 1;
};

class AdaptiveBlendReuse {
 public:
  using Params = AdaptiveBlendReuseParams;
  AdaptiveBlendReuse() : AdaptiveBlendReuse(Params{}) {}
  // Throws Error(kInvalidArgument) for a parameter outside its range.
  explicit AdaptiveBlendReuse(Params params);
  [[nodiscard]] ReusePlan plan(const PromptLayout& layout, const ChunkStore& store) const;
  [[nodiscard]] const Params& params() const { return p_; }

  // d above for a chunk of `length` tokens after `preceding` tokens (both >= 0).
  [[nodiscard]] static double predicted_deviation(std::int32_t preceding, std::int32_t length);

 private:
  Params p_;
};

}  // namespace chunkwise
