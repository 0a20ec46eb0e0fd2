// Private to SparseIndexBuilder (cuda/sparse_index.cpp, cuda/sparse_index.cu): the launchers of the
// device mask building, each enqueued on a stream without synchronising. Plain C++17 (the host
// class includes it from a C++20 translation unit, the kernels from nvcc).
//
// A chunk's mask is built as a bitmap first: row (h, j) (index h * n_qtiles + j, query tile
// t = first_qtile + j) owns `words` 32-bit words, bit c of the row set when key tile c is kept
// (c <= t only). Vertical-slash adds per-head column lists (ascending positions). count_rows()
// then writes the rows' tile and column counts, the batch's exclusive scan turns them into row_ptr
// and column_ptr, and emit_rows() writes col_idx and column_idx in order.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "chunkwise/cuda/common.hpp"

// Helpers both sides use.
#if defined(__CUDACC__)
#define CHUNKWISE_SPARSE_HD __host__ __device__
#else
#define CHUNKWISE_SPARSE_HD
#endif

namespace chunkwise::cuda::sparse_index {

// One chunk of one sequence, in tiles. Rows sit at positions query_begin .. kv_len - 1.
struct Geometry {
  int tile = 64;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int query_begin = 0;
  int query_len = 0;
  int kv_len = 0;
  int first_qtile = 0;
  int n_qtiles = 0;
  int n_ktiles = 0;  // first_qtile + n_qtiles: key tiles 0 .. the last query tile
  int words = 0;     // bitmap words per row: ceil(n_ktiles / 32)
  [[nodiscard]] CHUNKWISE_SPARSE_HD int rows() const { return n_heads * n_qtiles; }
};

// A layer's paged K cache as a sequence sees it: token p of kv head x at
// k + pages[p / block_size] * block_stride + (p % block_size) * row_stride + x * head_dim.
template <class T>
struct Keys {
  const T* k = nullptr;
  const std::int32_t* pages = nullptr;
  int block_size = 16;
  int row_stride = 0;  // n_kv_heads * head_dim
  std::int64_t block_stride = 0;
};

// Per-head sizes of a vertical-slash layer (VerticalSlashSizes as three ints).
struct VsHead {
  std::int32_t vertical;
  std::int32_t slash;
  std::int32_t dense;
};

// ---- the last-query estimate (vertical-slash, FlexPrefill) -------------------------------------

// Keys per CTA of the estimate kernels.
constexpr int kEstimateKeys = 512;
CHUNKWISE_SPARSE_HD inline int estimate_blocks(int kv_len) {
  return (kv_len + kEstimateKeys - 1) / kEstimateKeys;
}
CHUNKWISE_SPARSE_HD inline int estimate_window(int rows) {
  return rows + kEstimateKeys - 1;
}

// Scratch of last_query_estimate for `rows` estimate rows over kv_len keys and n_heads heads.
struct EstimateBuffers {
  float2* part = nullptr;       // [n_heads][n_kb][rows]: per-CTA (max, sum of exp)
  float2* stats = nullptr;      // [n_heads][rows]: (max, sum of exp) over every key
  float* vertical = nullptr;    // [n_heads][kv_len]
  float* slash_part = nullptr;  // [n_heads][n_kb][estimate_window(rows)]
  float* slash = nullptr;       // [n_heads][kv_len]
};

// For each head h not skipped (skip[h * skip_stride] != 0, skip may be null): the softmax of the
// chunk's last `rows` queries (positions kv_len - rows ..) against keys 0 .. their own position,
// fp32, and its column sums (vertical[h][key]) and diagonal sums (slash[h][position - key]), as
// detail::last_query_attention() and vertical_slash_sums() define them. q: the chunk's rows
// [query_len, n_heads, head_dim]. head_dim 64 or 128.
template <class T>
void last_query_estimate(const Geometry& g, const T* q, const Keys<T>& keys, int rows, float scale,
                         const std::int32_t* skip, int skip_stride, const EstimateBuffers& b,
                         cudaStream_t stream);

// ---- pooling -----------------------------------------------------------------------------------

// kbar[kv head][c][x]: the mean of key tile c (the keys it has below kv_len), fp32.
template <class T>
void pool_keys(const Geometry& g, const Keys<T>& keys, float* kbar, cudaStream_t stream);
// qbar[h][j][x]: the mean of the chunk's rows in query tile first_qtile + j.
template <class T>
void pool_queries(const Geometry& g, const T* q, float* qbar, cudaStream_t stream);

// ---- masks as bitmaps --------------------------------------------------------------------------

// StreamingAttention: tiles [0, sink_tiles) and [t - window_tiles, t] of every row.
void streaming_bits(const Geometry& g, int sink_tiles, int window_tiles, std::uint32_t* bitmap,
                    cudaStream_t stream);

// Rows of pooled scores per CTA for n_ktiles key tiles (0: too many key tiles) and the dynamic
// shared memory that takes.
int pooled_rows_per_cta(int n_ktiles, int head_dim);
std::size_t pooled_smem_bytes(int n_ktiles, int head_dim);

// BlockTopKAttention: per row the top_k key tiles by qbar . kbar (c <= t), tile 0 and tile t first.
void block_topk_bits(const Geometry& g, const float* qbar, const float* kbar, int top_k,
                     std::uint32_t* bitmap, cudaStream_t stream);

// VerticalSlashAttention, after last_query_estimate(): per non-dense head the top columns
// (ascending into columns[h][0 .. column_count[h]), capacity col_cap) and the top diagonals as
// counts offset_prefix[h][i] = selected offsets below i (i = 0 .. kv_len), then band_bits[h]
// (band_words words): bit d set when a selected offset lies in [(d-1)*tile + 1, (d+1)*tile - 1].
void vs_select(const Geometry& g, const VsHead* sizes, int forced_columns, int forced_diagonals,
               const float* vertical, const float* slash, std::int32_t* columns, int col_cap,
               std::int32_t* column_count, std::int32_t* offset_prefix, std::uint32_t* band_bits,
               int band_words, cudaStream_t stream);
// The key tiles of every row: every causal tile for a dense head, else the tiles the selected
// diagonals' bands touch.
void vs_bits(const Geometry& g, const VsHead* sizes, const std::int32_t* offset_prefix,
             const std::uint32_t* band_bits, int band_words, std::uint32_t* bitmap, cudaStream_t stream);

// FlexPrefillAttention, after last_query_estimate() (rows = min(tile, query_len)) and pool_keys().
struct FlexParams {
  double gamma = 0.9;
  double tau = 0.1;
  int min_blocks = 0;
  int max_blocks = 0;  // already min(max budget, n_ktiles) or n_ktiles
  float scale = 1.0f;
  int est_rows = 0;
};
struct FlexBuffers {
  std::int32_t* cover = nullptr;    // [n_heads][2]: cover counts of vertical and slash
  std::int32_t* budget = nullptr;   // [n_heads][3]: nv, ns, query-aware
  float* v_pool = nullptr;          // [n_heads][n_ktiles]
  float* s_pool = nullptr;          // [n_heads][n_ktiles]
  float* qmean = nullptr;           // [n_heads][head_dim]
  float* est = nullptr;             // [n_heads][n_ktiles]
  std::uint32_t* v_bits = nullptr;  // [n_heads][kwords]
  std::uint32_t* o_bits = nullptr;  // [n_heads][kwords]
  float* prob = nullptr;            // [n_heads][n_qtiles][n_ktiles]: query-aware pooled softmax
  int kwords = 0;                   // ceil(n_ktiles / 32) + 1
};
// Budgets, the pattern test and the vertical / slash tile picks of every head, then the rows'
// bitmap; for query-aware heads also the pooled per-row scores and their union.
template <class T>
void flex_prefill(const Geometry& g, const T* q, const FlexParams& p, const float* vertical,
                  const float* slash, const float* kbar, float* qbar, const FlexBuffers& b,
                  std::uint32_t* bitmap, cudaStream_t stream);

// ---- CSR assembly ------------------------------------------------------------------------------

// tile_counts[r] = kept tiles of row r; column_counts[r] = its columns (columns may be null: 0).
void count_rows(const Geometry& g, const std::uint32_t* bitmap, const std::int32_t* columns, int col_cap,
                const std::int32_t* column_count, std::int32_t* tile_counts, std::int32_t* column_counts,
                cudaStream_t stream);
// col_idx[row_ptr[r] ..] = row r's tiles, column_idx[column_ptr[r] ..] its columns (row_ptr and
// column_ptr point at the chunk's first row; column_ptr null: no columns).
void emit_rows(const Geometry& g, const std::uint32_t* bitmap, const std::int32_t* columns, int col_cap,
               const std::int32_t* column_count, const std::int32_t* row_ptr, std::int32_t* col_idx,
               const std::int32_t* column_ptr, std::int32_t* column_idx, cudaStream_t stream);

// out[i] = in[0] + ... + in[i - 1] over n ints (CUB); temp_bytes from scan_temp_bytes(n).
std::size_t scan_temp_bytes(int n);
void exclusive_scan(const std::int32_t* in, std::int32_t* out, int n, void* temp, std::size_t temp_bytes,
                    cudaStream_t stream);

// out[2i], out[2i + 1] = tiles and columns of chunk i, whose rows are [chunk_rows[i], chunk_rows[i + 1]).
void record_counts(const std::int32_t* row_ptr, const std::int32_t* column_ptr,
                   const std::int32_t* chunk_rows, int n_chunks, std::int32_t* out, cudaStream_t stream);

}  // namespace chunkwise::cuda::sparse_index
