#pragma once

#include <cstdint>
#include <vector>

namespace chunkwise {

// What a sparse-attention policy sees for one prefill chunk of one sequence: sizes, and
// (when the policy asks for it) pooled query/key blocks of the chunk.
struct AttentionProbe {
  int layer = 0;
  int n_heads = 0;
  int head_dim = 0;
  int query_begin = 0;  // first position of the chunk
  int query_len = 0;    // rows in the chunk
  int kv_len = 0;       // keys visible to the last row
  int block_size = 64;  // query/key block of the mask
};

// Per head, block-sparse rows (BSR): for query block r of head h, the key blocks
// col_index[row_start[h][r] .. row_start[h][r + 1]). dense == true means every causal block.
struct BlockMask {
  bool dense = true;
  int block_size = 64;
  std::vector<std::vector<std::int32_t>> row_start;  // [head][query_blocks + 1]
  std::vector<std::vector<std::int32_t>> col_index;  // [head][nnz]
};

}  // namespace chunkwise
