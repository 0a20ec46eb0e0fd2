// CPU reference ops, fp32. Framework-free: raw pointers with explicit shapes, row-major.
// Every CUDA op is checked against these.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "chunkwise/core/types.hpp"
#include "chunkwise/model/config.hpp"

namespace chunkwise {
struct BlockMask;
}  // namespace chunkwise

namespace chunkwise::cpu {

// Sets the number of threads Eigen and the ops use (0 = all cores).
void set_num_threads(int n);
int num_threads();

// y[m, n] = x[m, k] * w[n, k]^T   (a linear layer with HF weight orientation)
void matmul_nt(const float* x, std::int64_t m, std::int64_t k, const float* w, std::int64_t n, float* y);

// y[r, :] = x[r, :] / rms(x[r, :]) * weight      (eps inside the sqrt, as in Llama)
void rms_norm(const float* x, const float* weight, std::int64_t rows, std::int64_t dim, float eps, float* y);

// Inverse frequencies for rotate-half RoPE, with Llama-3 scaling when enabled; size head_dim/2.
std::vector<float> rope_inv_freq(int head_dim, float theta, const RopeScaling& scaling);

// In place rotate-half RoPE (HF convention: pairs (i, i + head_dim/2)) on x[rows, n_heads, head_dim].
void rope(float* x, std::int64_t rows, int n_heads, int head_dim, const std::int32_t* positions,
          std::span<const float> inv_freq);

// out[i] = silu(gate[i]) * up[i]
void swiglu(const float* gate, const float* up, std::int64_t n, float* out);

// out[i, :] = table[ids[i], :]; throws Error(kTokenOutOfRange) for an id outside [0, vocab).
void embed(const float* table, std::int64_t vocab, std::int64_t dim, const TokenId* ids, std::int64_t n,
           float* out);

// One layer of a paged KV cache: block b holds block_size tokens, laid out
// [block_size, n_kv_heads, head_dim] for K at k + b*block_stride and likewise for V.
struct PagedKv {
  float* k = nullptr;
  float* v = nullptr;
  int block_size = 16;
  int n_kv_heads = 0;
  int head_dim = 0;
  [[nodiscard]] std::int64_t block_stride() const {
    return static_cast<std::int64_t>(block_size) * n_kv_heads * head_dim;
  }
};

// Writes k_new/v_new [n, n_kv_heads*head_dim] into the cache at slots (block*block_size + offset).
void write_kv(const PagedKv& cache, const float* k_new, const float* v_new, const std::int64_t* slots,
              std::int64_t n);

// Ragged batch of sequences over a paged cache, CSR form.
// Sequence s owns query rows [query_start[s], query_start[s+1]) and pages
// pages[page_start[s] .. page_start[s+1]); its cache holds kv_len[s] tokens (this step's included).
// Query row r sits at position q_pos[r] and attends causally to cache positions [0, q_pos[r]].
struct AttentionBatch {
  std::span<const std::int32_t> query_start;  // n_seq + 1
  std::span<const std::int32_t> page_start;   // n_seq + 1
  std::span<const std::int32_t> pages;
  std::span<const std::int32_t> kv_len;  // n_seq
  std::span<const std::int32_t> q_pos;   // total query rows
};

// q [rows, n_heads, head_dim] -> out [rows, n_heads, head_dim]; grouped-query attention with
// n_heads / n_kv_heads query heads per KV head; softmax(q.k * scale) v.
void paged_attention(const float* q, const PagedKv& cache, const AttentionBatch& batch, int n_heads,
                     float scale, float* out);

// Block-sparse attention for one sequence's prefill chunk: query rows r = 0 .. query_len - 1 at
// positions query_begin + r (q and out [query_len, n_heads, head_dim]) over the cache positions
// 0 .. query_begin + query_len - 1 held in `pages`. The row at position p of query tile t and head
// h attends, with one softmax, to the keys of the mask row's kept tiles (only those <= p) and to its
// extra columns; a row with no kept key gets zeros. mask.dense is exactly paged_attention. Throws
// Error(kInvalidArgument) when the mask is not valid for the chunk (validate(mask, probe)) or the
// pages do not cover the keys.
void sparse_attention(const float* q, const PagedKv& cache, std::span<const std::int32_t> pages,
                      int query_begin, int query_len, const BlockMask& mask, int n_heads, float scale,
                      float* out);

}  // namespace chunkwise::cpu
