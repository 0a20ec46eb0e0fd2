// FlexPrefill: per head, the last tile of queries estimates the attention; a Jensen-Shannon test
// between the pooled block-level estimate and the vertical profile picks a query-aware head (each
// query tile's own pooled scores decide) or a vertical-slash head; tiles are then taken, largest
// first, until they cover gamma of the estimated attention, with a minimum budget.
// Defaults from the official code: tile 128, gamma 0.9, tau 0.1, min budget 1024 tokens.
#pragma once

#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/sparse_fallback.hpp"

namespace chunkwise {

struct FlexPrefillAttentionParams {
  int tile = 128;
  double gamma = 0.9;     // attention mass to cover
  double tau = 0.1;       // JS distance below which a head is query-aware
  int min_budget = 1024;  // tokens (rounded up to tiles)
  int max_budget = 0;     // tokens; 0 = no cap
  SparseFallback fallback;
};

class FlexPrefillAttention : public detail::SparsePolicyBase<FlexPrefillAttentionParams> {
 public:
  using Params = FlexPrefillAttentionParams;
  FlexPrefillAttention() : FlexPrefillAttention(Params{}) {}
  explicit FlexPrefillAttention(Params params);
  [[nodiscard]] BlockMask select(const AttentionProbe& probe) const;
  [[nodiscard]] const Params& pattern() const { return p_; }  // see sparse_pattern.hpp
};

}  // namespace chunkwise
