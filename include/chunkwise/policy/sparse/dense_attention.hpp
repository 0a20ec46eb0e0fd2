// Exact attention: every query block sees every causal key block.
#pragma once

#include "chunkwise/policy/sparse/block_mask.hpp"

namespace chunkwise {

struct DenseAttention {
  BlockMask select(const AttentionProbe& probe) const {
    BlockMask m;
    m.dense = true;
    m.block_size = probe.block_size;
    return m;
  }
};

}  // namespace chunkwise
