// Block-sparse masks of the stock sparse policies built on the GPU, inside the step: for each
// qualifying chunk of a batch and each layer, the mask SparseSelector::select() would return for
// that chunk (StreamingAttention, VerticalSlashAttention, BlockTopKAttention, FlexPrefillAttention,
// given as their SparsePattern), read straight from the chunk's post-RoPE queries and the layer's
// paged K cache, written into a BlockSparseMaskView for PagedAttention::run(). No host round trip:
// CudaBackend uses it whenever the selector has a pattern (chunkwise/cuda/cuda_backend.hpp).
//
// FlashInfer-style: raw device pointers, a grow-only workspace the object owns, every launch on
// the caller's stream. plan() (once per batch) does the host work: sizes from the pattern and the
// chunks' lengths only, allocation, and small uploads (pageable async copies). build() and
// finish() (per layer) only enqueue kernels: no allocation, no host synchronisation, no host reads
// of device data. download() is the one synchronising call (for tests and benchmarks).
//
// Semantics are those of the host select() of each policy (src/policy/sparse/*.cpp), fallback
// included: a chunk below min_kv_len, or with a single row, has no mask rows (dense); a layer in
// dense_layers is dense for every chunk (dense_layer(), no build needed). Arithmetic is fp32 like
// the host's but in another order (tensor-core products for the last-query estimate, whose inputs
// are the same 16-bit values), so values that tie or nearly tie may rank differently; ties of
// exactly equal values go to the lower index as in detail::top_k(). FlexPrefill's query-aware
// union takes the lowest flat index among exactly equal probabilities (the host's order is
// unspecified there).
//
// The mask of a batch: rows ordered (chunk, head, query tile) in the order of plan()'s chunks,
// seq_row_start covering the batch's num_seqs sequences (empty ranges for sequences without a
// chunk or with a dense one). Column lists (column_ptr, column_idx) exist for vertical-slash only.
//
// Limits: head_dim 64 or 128; n_heads a multiple of n_kv_heads; block top-k and FlexPrefill keep a
// CTA's rows of tile scores in shared memory, so a chunk may have at most about 50K key tiles
// (3M tokens at tile 64); every count of the batch's index must fit int32 (plan() checks the
// worst case). Workspace: the index itself at its worst case (every causal tile for
// vertical-slash and FlexPrefill, the column capacity times the rows for vertical-slash), the
// estimate's per-head sums (a few floats per head and key) and FlexPrefill's per-head
// [n_qtiles, n_ktiles] probabilities.
//
// Host C++20 (it names SparsePattern); the kernels live in cuda/sparse_index.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "chunkwise/cuda/attention.hpp"
#include "chunkwise/cuda/common.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/sparse_pattern.hpp"

namespace chunkwise::cuda {

// One sequence's prefill chunk: rows at positions query_begin .. query_begin + query_len - 1, its
// cache holding kv_len = query_begin + query_len tokens.
struct SparseIndexChunk {
  int seq = 0;  // the sequence's index in the batch (ascending over plan()'s chunks)
  int query_begin = 0;
  int query_len = 0;
  int kv_len = 0;
};

struct SparseIndexShape {
  int n_layers = 1;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
};

class SparseIndexBuilder {
 public:
  SparseIndexBuilder();
  ~SparseIndexBuilder();
  SparseIndexBuilder(SparseIndexBuilder&&) noexcept;
  SparseIndexBuilder& operator=(SparseIndexBuilder&&) noexcept;
  SparseIndexBuilder(const SparseIndexBuilder&) = delete;
  SparseIndexBuilder& operator=(const SparseIndexBuilder&) = delete;

  // Plans a batch of num_seqs sequences whose prefill chunks are `chunks` (at most one per
  // sequence, seq ascending): sizes the workspace and uploads the pattern's tables and the batch's
  // seq_row_start on `stream`. Throws Error(kInvalidArgument) for a pattern, shape or chunk it
  // cannot serve, Error(kBackend) for CUDA failures.
  void plan(const SparsePattern& pattern, const SparseIndexShape& shape,
            std::span<const SparseIndexChunk> chunks, int num_seqs, cudaStream_t stream);

  [[nodiscard]] int tile() const;
  [[nodiscard]] int chunks() const;
  // Layer `layer` is attended densely for every chunk (the pattern's dense_layers).
  [[nodiscard]] bool dense_layer(int layer) const;
  // Chunk i has no mask rows (below min_kv_len, or a single row).
  [[nodiscard]] bool dense_chunk(int chunk) const;
  // Query tiles of chunk i (its first one and how many), as BlockMask counts them.
  [[nodiscard]] int first_qtile(int chunk) const;
  [[nodiscard]] int n_qtiles(int chunk) const;

  // Builds chunk i's mask rows of layer `layer`: q is the chunk's rows [query_len, n_heads,
  // head_dim] (post-RoPE, what attention reads), kv the layer's cache (its K part is read), pages
  // the sequence's page list (device). Nothing for a dense chunk; must not be called for a dense
  // layer. Kernels only.
  template <class T>
  void build(int chunk, int layer, const T* q, const BasicPagedKvView<T>& kv, const std::int32_t* pages,
             float scale, cudaStream_t stream);

  // After build() of every chunk of the layer: assembles the batch's mask (scan, emit) and records
  // each chunk's counts for the layer (counts()). The view stays valid until the next finish() or
  // plan(). Kernels only.
  const BlockSparseMaskView& finish(int layer, cudaStream_t stream);

  // Device int32 [n_layers][chunks()][2]: (kept tiles, columns) of each chunk in each layer that
  // finish() ran for. Download once after the step: the numbers mask_cost() needs.
  [[nodiscard]] const std::int32_t* counts() const;
  [[nodiscard]] std::size_t counts_size() const;  // elements

  // A summary of chunk i's mask for SparseSelector::record(): dense = false and every size right
  // (row_ptr, col_index of `tiles` entries, column_ptr and column_index of `columns` entries) but
  // the indices themselves zero; reuses `out`'s storage.
  void summary(int chunk, int tiles, int columns, BlockMask& out) const;

  // Chunk i's rows of the last finish() as a host BlockMask (dense when the chunk is dense).
  // Synchronises `stream`.
  [[nodiscard]] BlockMask download(int chunk, cudaStream_t stream) const;

  [[nodiscard]] std::size_t workspace_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chunkwise::cuda
