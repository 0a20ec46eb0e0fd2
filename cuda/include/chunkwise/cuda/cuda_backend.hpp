// The CUDA backend: the Llama-family forward on one GPU. 16-bit weights and KV cache (bf16 by
// default, fp16 where asked: chunkwise/cuda/dtype.hpp), fp32 residual stream and accumulation;
// matrix products through cuBLAS, everything else in our kernels (chunkwise/cuda/ops.hpp,
// chunkwise/cuda/attention.hpp). Satisfies the Backend contract of InferenceSession, and is
// checked against CpuBackend (tests/cuda).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "chunkwise/backend/any_backend.hpp"
#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/core/sampling.hpp"
#include "chunkwise/cuda/dtype.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise::cuda {

// What the chunk tier holds now, per level.
struct ChunkTierUsage {
  std::size_t device_entries = 0;
  std::size_t device_bytes = 0;
  std::size_t host_entries = 0;
  std::size_t host_bytes = 0;
};

class CudaBackend {
 public:
  // Uploads the model (its fp32 weights rounded to dtype) to device `device` and allocates
  // num_blocks KV blocks of block_size tokens (1 to 128) for every layer, in dtype. Throws
  // Error(kBackend) when there is no such device or its memory is short, kInvalidArgument for
  // unsupported shapes.
  CudaBackend(std::shared_ptr<const Model> model, int num_blocks, int block_size, int device = 0,
              DType dtype = DType::kBF16);
  ~CudaBackend();
  CudaBackend(CudaBackend&&) noexcept;
  CudaBackend& operator=(CudaBackend&&) noexcept;

  // Runs the model on batch and writes logits [batch.logit_rows.size(), vocab] (fp32, host) into
  // logits. Same errors as CpuBackend::forward. With batch.sparse, every qualifying chunk is
  // attended with the selector's mask in every layer; such a chunk's rows must sit at consecutive
  // positions ending at kv_len - 1 (else Error(kInvalidArgument)). A selector with a pattern (the
  // stock policies) has its masks built on the GPU inside the step (SparseIndexBuilder) and
  // reported through record(); any other is probed (its q and keys copied to the host as fp32, one
  // synchronisation per layer) and asked with select(). Without a selector the step is unchanged.
  // With batch.recompute, as CpuBackend: the check layer's key deviations come to the host (one
  // synchronisation), the rows are chosen there (select_recompute_rows) and the later layers run on
  // those rows only; the report, when set, is filled.
  void forward(const ForwardBatch& batch, std::span<float> logits);
  // forward() and one token per logits row sampled on the device, exactly as chunkwise::sample()
  // draws it: only token ids come back to the host.
  void forward_sample(const ForwardBatch& batch, std::span<const SampleRow> rows, std::span<TokenId> out);

  [[nodiscard]] const Model& model() const;
  [[nodiscard]] int num_blocks() const;
  [[nodiscard]] int block_size() const;
  [[nodiscard]] int device() const;
  [[nodiscard]] DType dtype() const;

  // Bytes of KV one block takes across all layers (K and V, 2 bytes an element in either dtype).
  static std::size_t kv_bytes_per_block(const ModelConfig& config, int block_size);

  // A saved block is kv_bytes_per_block() bytes: every layer's K block, then every layer's V block.
  void copy_block(BlockId src, BlockId dst);
  void save_block(BlockId src, std::span<std::byte> dst) const;
  void load_block(BlockId dst, std::span<const std::byte> src);

  // Chunk reuse, as CpuBackend's: write_chunk_kv places a stored chunk (fp32, host) at positions
  // [position, position + n_tokens) of a sequence, every layer's K and V to slots, keys rotated by
  // position - kv.position0. The fp32 KV is uploaded and rotated on the device (angles in double,
  // as rotate_keys), because rotating a long chunk on the host would dominate the time to first
  // token. Returns once kv's memory is no longer read. read_chunk_kv is the reverse, without
  // rotation, widened to fp32 on the host. Both throw Error(kInvalidArgument) as
  // check_chunk_placement.
  void write_chunk_kv(const ChunkKv& kv, std::int32_t position, std::span<const std::int64_t> slots);
  [[nodiscard]] ChunkKv read_chunk_kv(std::span<const TokenId> tokens, std::int32_t position0,
                                      std::span<const std::int64_t> slots) const;

  // The chunk tier (in front of a ChunkStore's host tier): entries in the cache's dtype, unrotated
  // (at their position0), keyed by ChunkKey, so that a hot chunk is placed without crossing the
  // host link as fp32 again. Two levels, each with a byte capacity: device memory, and pinned host
  // memory. Entries are kept on the device when they fit; the device level's least recently used
  // entries move to the host level (entries too large for the device go there directly), whose own
  // are dropped. Capacity 0 (the default) disables a level; shrinking evicts. keep_chunk_kv uploads
  // kv, replacing what the key held; an entry larger than both capacities, or one the device or
  // host cannot allocate now, is not kept. write_kept_chunk_kv places a kept entry like
  // write_chunk_kv and marks it used; false on a miss. It only queues the placement: the next
  // forward places the queue on a second stream, overlapped with the layers it recomputes for every
  // row (below a selective recompute's check layer, which it then skips). From the device level
  // that is one launch. Host-level entries cross the host link by the copy engine in groups of
  // layers, issued a few layers ahead of the forward, and each layer of the forward waits only for
  // its own group. Any other use of the cache places the queue before it.
  // It throws Error(kInvalidArgument) unless slots has one slot in the pool per kept token and
  // position >= 0.
  void set_chunk_tier_capacity(std::size_t device_bytes, std::size_t host_bytes = 0);
  void keep_chunk_kv(const ChunkKey& key, const ChunkKv& kv);
  [[nodiscard]] bool write_kept_chunk_kv(const ChunkKey& key, std::int32_t position,
                                         std::span<const std::int64_t> slots);
  [[nodiscard]] bool keeps_chunk_kv(const ChunkKey& key) const;  // without marking it used
  [[nodiscard]] ChunkTierUsage chunk_tier_usage() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// For InferenceSession<..., AnyBackend> / Engine: SessionConfig::backend = cuda::backend_provider(0).
// Its name() is "cuda:N", with " fp16" appended for that dtype.
std::shared_ptr<const BackendProvider> backend_provider(int device = 0, DType dtype = DType::kBF16);

}  // namespace chunkwise::cuda
