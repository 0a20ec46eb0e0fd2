// The CUDA backend: the Llama-family forward on one GPU. 16-bit weights and KV cache (bf16 by
// default, fp16 where asked: chunkwise/cuda/dtype.hpp), fp32 residual stream and accumulation;
// matrix products through cuBLAS, everything else in our kernels (chunkwise/cuda/ops.hpp,
// chunkwise/cuda/attention.hpp). Satisfies the Backend contract of InferenceSession, and is
// checked against CpuBackend (tests/cuda).
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "chunkwise/backend/any_backend.hpp"
#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/core/sampling.hpp"
#include "chunkwise/cuda/dtype.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise::cuda {

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

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// For InferenceSession<..., AnyBackend> / Engine: SessionConfig::backend = cuda::backend_provider(0).
// Its name() is "cuda:N", with " fp16" appended for that dtype.
std::shared_ptr<const BackendProvider> backend_provider(int device = 0, DType dtype = DType::kBF16);

}  // namespace chunkwise::cuda
