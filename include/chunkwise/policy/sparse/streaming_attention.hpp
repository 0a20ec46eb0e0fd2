// Sink plus local window (the A-shape of MInference; StreamingLLM's pattern applied to prefill):
// every query tile sees the first `sink` tokens and the `window` tokens before it. No probe.
#pragma once

#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/sparse_fallback.hpp"

namespace chunkwise {

struct StreamingAttentionParams {
  int tile = 64;
  int sink = 128;     // tokens at the start every query sees
  int window = 1024;  // tokens before the query tile every query sees (the tile itself is kept)
  SparseFallback fallback;
};

class StreamingAttention : public detail::SparsePolicyBase<StreamingAttentionParams> {
 public:
  using Params = StreamingAttentionParams;
  StreamingAttention() : StreamingAttention(Params{}) {}
  explicit StreamingAttention(Params params);
  [[nodiscard]] BlockMask select(const AttentionProbe& probe) const;
  [[nodiscard]] const Params& pattern() const { return p_; }  // see sparse_pattern.hpp
};

}  // namespace chunkwise
