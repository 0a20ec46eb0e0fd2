// Exact attention: every query tile sees every causal key tile, with no index and no probe.
#pragma once

#include <limits>

#include "chunkwise/policy/sparse/block_mask.hpp"

namespace chunkwise {

struct DenseAttention {
  [[nodiscard]] int tile() const { return 64; }
  [[nodiscard]] int min_kv_len() const { return std::numeric_limits<int>::max(); }
  [[nodiscard]] BlockMask select(const AttentionProbe& probe) const { return dense_mask(probe, tile()); }
};

}  // namespace chunkwise
