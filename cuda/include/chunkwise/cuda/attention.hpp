// Paged attention on the GPU: ragged batches mixing decode rows and prefill chunks over a paged
// 16-bit KV cache (bf16 or f16; one layer, the layout of cpu::PagedKv), causal, grouped-query, with
// an optional block-sparse mask for prefill (METHODS.md 2.1). fp32 accumulation, online softmax,
// output in the storage type.
//
// Two calls per step: plan() on the host reads the HOST copies of the batch metadata, decides the
// work partition (prefill query tiles, decode rows, KV splits for few long sequences) and uploads
// the work list into device buffers the object owns (grow-only). run() then only launches kernels:
// no allocation, no host synchronisation, no host reads of device data, so the launches of a step
// can be captured in a CUDA graph and replayed as long as plan() is not run again (a replay uses
// the grid sizes and work list of the plan it was captured with). run() may be called any number
// of times per plan (once per layer) with different q / kv / out / mask pointers and scale, as long
// as the batch is the one planned. plan() and run() must use the same stream (or plan's stream must
// be ordered before run's): the work list upload is an async copy on plan's stream.
//
// This header is plain C++17 (CUDA translation units include it).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "chunkwise/cuda/common.hpp"

namespace chunkwise::cuda {

// One layer of the paged KV cache, in device memory: block b holds block_size tokens laid out
// [block_size, n_kv_heads, head_dim] T (bf16 or f16) at k + b * block_stride (likewise v), with
// block_stride = block_size * n_kv_heads * head_dim.
template <class T>
struct BasicPagedKvView {
  const T* k = nullptr;
  const T* v = nullptr;
  int block_size = 16;  // 1 .. 128
  int n_kv_heads = 0;
  int head_dim = 0;  // 64 or 128
};
using PagedKvView = BasicPagedKvView<bf16>;  // the default storage type

// A ragged batch, CSR form, every pointer an int32 DEVICE array (the layout of cpu::AttentionBatch).
// Sequence s owns query rows [query_start[s], query_start[s+1]) and pages
// pages[page_start[s] .. page_start[s+1]); its cache holds kv_len[s] tokens (this step's included).
// Query row r sits at position q_pos[r] and attends causally to cache positions [0, q_pos[r]].
struct AttentionBatchView {
  const std::int32_t* query_start = nullptr;  // num_seqs + 1
  const std::int32_t* page_start = nullptr;   // num_seqs + 1
  const std::int32_t* pages = nullptr;        // page_start[num_seqs]
  const std::int32_t* kv_len = nullptr;       // num_seqs
  const std::int32_t* q_pos = nullptr;        // rows
  int num_seqs = 0;
  int rows = 0;
};

// Block-sparse mask for prefill (METHODS.md 2.1), every pointer an int32 DEVICE array.
//
// Tiles are by absolute position: with tile size T (64 or 128), query tile t holds the queries at
// positions [t*T, (t+1)*T) and key tile c the cache positions [c*T, (c+1)*T). A sequence whose
// chunk covers positions p0 .. p1 (its query rows must sit at consecutive positions) has
// n_qtiles = p1/T - p0/T + 1 query tiles, numbered j = t - p0/T from the tile of its first position.
//
// Mask rows, one per (sequence, q head, query tile), are ordered (sequence, head, j):
//   seq_row_start[num_seqs + 1]: sequence s owns mask rows [seq_row_start[s], seq_row_start[s+1]).
//     An empty range means sequence s is attended densely (causal), at no indexing cost; otherwise
//     it must hold exactly n_heads * n_qtiles rows, row index seq_row_start[s] + h * n_qtiles + j.
//     Sequences with a single query row are decode rows: they are always attended densely and the
//     rows given for them (if any) are ignored.
//   row_ptr[n_rows + 1], col_idx[row_ptr[n_rows]]: key tiles kept by each row, CSR, sorted
//     ascending, each c <= t (tiles past the query tile are dropped; inside the diagonal tile the
//     causal mask applies per element, key position <= query position).
//   column_ptr[n_rows + 1], column_idx[...] (optional: both null for none): extra key positions
//     gathered per row, each strictly before the query tile's first position and outside the
//     row's kept tiles (a position listed twice, or also inside a kept tile, counts twice). They
//     are attended with the tiles in one online softmax. Positions outside [0, max query position
//     of the tile] are ignored.
// A mask row that keeps no tile and no column writes zeros for its queries (no diagonal is added:
// a FlexPrefill-style caller lists the diagonal tile itself).
// plan() must be told the tile size (sparse_tile) so that prefill query tiles align with it.
struct BlockSparseMaskView {
  int tile = 128;  // 64 or 128
  const std::int32_t* seq_row_start = nullptr;
  const std::int32_t* row_ptr = nullptr;
  const std::int32_t* col_idx = nullptr;
  const std::int32_t* column_ptr = nullptr;
  const std::int32_t* column_idx = nullptr;
};

// A read-only view of host int32 data (std::span without C++20): from a std::vector or (ptr, n).
struct HostIndexSpan {
  const std::int32_t* data = nullptr;
  std::size_t size = 0;
  HostIndexSpan() = default;
  HostIndexSpan(const std::int32_t* p, std::size_t n) : data(p), size(n) {}
  HostIndexSpan(const std::vector<std::int32_t>& v)
      : data(v.data()), size(v.size()) {}  // NOLINT: implicit on purpose
  [[nodiscard]] std::int32_t operator[](std::size_t i) const { return data[i]; }
};

// What the last plan() decided (for logs, tests and benchmarks).
struct AttentionPlanStats {
  int prefill_items = 0;            // prefill CTAs per q head (query tiles x KV splits)
  int prefill_tile_rows = 0;        // 64 or 128 (0: no prefill work)
  bool prefill_wgmma = false;       // the prefill runs the Hopper (wgmma) kernel, else the sm_80 one
  int prefill_splits = 1;           // most KV splits of a prefill tile
  int decode_items = 0;             // decode CTAs per KV head (rows x KV splits)
  int decode_splits = 1;            // most KV splits of a decode row
  int merge_rows = 0;               // rows whose splits are merged
  int launches = 0;                 // kernels run() launches
  std::size_t workspace_bytes = 0;  // device memory the object holds (work list + partials)
};

// Overrides of plan()'s choices, for tests and benchmarks (the defaults decide by themselves).
struct AttentionPlanOptions {
  int tile_rows = 0;              // dense prefill query tile: 0 = auto, 64 or 128 (a mask's tile wins)
  int decode_split_keys = 0;      // 0 = auto, > 0 = split decode rows every this many keys, < 0 = never
  int prefill_split_keys = 0;     // the same for dense prefill tiles
  bool portable_prefill = false;  // run the sm_80 prefill kernel on Hopper too (tests, benchmarks)
};

class PagedAttention {
 public:
  PagedAttention();
  ~PagedAttention();
  PagedAttention(PagedAttention&&) noexcept;
  PagedAttention& operator=(PagedAttention&&) noexcept;
  PagedAttention(const PagedAttention&) = delete;
  PagedAttention& operator=(const PagedAttention&) = delete;

  // Plans one batch from HOST copies of its metadata (query_start [num_seqs + 1], page_start
  // [num_seqs + 1], kv_len [num_seqs], q_pos [rows]; the same values run() gets on the device) and
  // uploads the work list on `stream` (on the current device). sparse_tile (0, 64 or 128): the tile
  // size of the masks run() will get; with 0, run() takes no mask. Throws
  // Error(kInvalidArgument) for unsupported shapes (head_dim not 64 or 128, n_heads not a positive
  // multiple of n_kv_heads, block_size outside 1..128, sparse_tile not 0/64/128) or inconsistent
  // metadata (the checks of cpu::paged_attention; with sparse_tile > 0 every sequence's rows must
  // sit at consecutive positions), Error(kBackend) for CUDA failures.
  void plan(HostIndexSpan query_start, HostIndexSpan page_start, HostIndexSpan kv_len, HostIndexSpan q_pos,
            int n_heads, int n_kv_heads, int head_dim, int block_size, cudaStream_t stream,
            int sparse_tile = 0);

  // out[rows, n_heads, head_dim] = softmax(q . k * scale) v for the planned batch; q and out T
  // [rows, n_heads, head_dim] in device memory (out must not alias q or the cache). T is the
  // cache's type, bf16 or f16 (a plan serves either). mask: null for dense causal attention, else a
  // mask with tile == the plan's sparse_tile. Every element of out is written. Throws
  // Error(kInvalidArgument) when the arguments do not match the plan (checked on the host from the
  // views' sizes only), Error(kBackend) when a launch fails.
  template <class T>
  void run(const T* q, const BasicPagedKvView<T>& kv, const AttentionBatchView& batch,
           const BlockSparseMaskView* mask, float scale, T* out, cudaStream_t stream);

  [[nodiscard]] const AttentionPlanStats& stats() const;
  // Takes effect at the next plan().
  void set_options(const AttentionPlanOptions& options);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chunkwise::cuda
