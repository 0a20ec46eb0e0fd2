// Block top-k (MInference's block-sparse pattern): mean-pool queries and keys over tiles, score
// tile pairs by pooled q . k, and keep each query tile's top_k key tiles. The diagonal tile and
// the first tile (the attention sink) are always kept and count towards top_k.
#pragma once

#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/sparse_fallback.hpp"

namespace chunkwise {

struct BlockTopKAttentionParams {
  int tile = 64;
  int top_k = 16;  // key tiles per query tile (MInference keeps 100 of 64 tokens at 100K+)
  SparseFallback fallback;
};

class BlockTopKAttention : public detail::SparsePolicyBase<BlockTopKAttentionParams> {
 public:
  using Params = BlockTopKAttentionParams;
  BlockTopKAttention() : BlockTopKAttention(Params{}) {}
  explicit BlockTopKAttention(Params params);
  [[nodiscard]] BlockMask select(const AttentionProbe& probe) const;
  [[nodiscard]] const Params& pattern() const { return p_; }  // see sparse_pattern.hpp
};

}  // namespace chunkwise
