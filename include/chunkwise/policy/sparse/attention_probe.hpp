// What a sparse-attention policy sees for one prefill chunk of one sequence in one layer.
#pragma once

#include <cstdint>

namespace chunkwise {

// The chunk's queries and every key so far, after RoPE, fp32, contiguous. The chunk's rows sit at
// consecutive positions query_begin .. query_begin + query_len - 1, and the keys are the cache
// positions 0 .. kv_len - 1 with kv_len = query_begin + query_len: a chunk of a chunked prefill
// sees every key before it (each chunk builds its own mask from its own last queries).
struct AttentionProbe {
  int layer = 0;
  int n_layers = 1;
  int n_heads = 0;  // query heads; query head h reads KV head h / (n_heads / n_kv_heads)
  int n_kv_heads = 0;
  int head_dim = 0;
  int query_begin = 0;       // position of the chunk's first row
  int query_len = 0;         // rows in the chunk
  int kv_len = 0;            // keys visible to the last row
  float scale = 1.0f;        // softmax scale of q . k
  const float* q = nullptr;  // [query_len, n_heads, head_dim]
  const float* k = nullptr;  // [kv_len, n_kv_heads, head_dim]

  [[nodiscard]] const float* query(int row, int head) const {
    return q + (static_cast<std::int64_t>(row) * n_heads + head) * head_dim;
  }
  [[nodiscard]] const float* key(int pos, int head) const {
    const int kv_head = head / (n_heads / n_kv_heads);
    return k + (static_cast<std::int64_t>(pos) * n_kv_heads + kv_head) * head_dim;
  }
};

}  // namespace chunkwise
