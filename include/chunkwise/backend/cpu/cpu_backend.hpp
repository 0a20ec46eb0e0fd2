// The fp32 CPU backend: Llama-family forward over a paged KV cache held in host memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise {

namespace cpu {
struct PagedKv;
}  // namespace cpu

class CpuBackend {
 public:
  // Allocates num_blocks KV blocks of block_size tokens for every layer.
  CpuBackend(std::shared_ptr<const Model> model, int num_blocks, int block_size);

  // Runs the model on batch and writes logits [batch.logit_rows.size(), vocab] into logits.
  // With batch.recompute set, only the rows it selects run past its check layer and the loaded KV
  // of the others stays (selective_recompute.hpp); its report, when set, is filled.
  // Throws Error(kInvalidArgument) on inconsistent metadata, kTokenOutOfRange on a bad token.
  void forward(const ForwardBatch& batch, std::span<float> logits);

  [[nodiscard]] int num_blocks() const { return num_blocks_; }
  [[nodiscard]] int block_size() const { return block_size_; }
  [[nodiscard]] const Model& model() const { return *model_; }

  // Bytes of KV one block takes across all layers (K and V, fp32).
  static std::size_t kv_bytes_per_block(const ModelConfig& config, int block_size);

  // KV movement for the KV memory layer: copy-on-write, host tier and swap. A saved block is
  // kv_bytes_per_block() bytes: every layer's K block, then every layer's V block.
  void copy_block(BlockId src, BlockId dst);
  void save_block(BlockId src, std::span<std::byte> dst) const;
  void load_block(BlockId dst, std::span<const std::byte> src);

  // Chunk reuse. write_chunk_kv places a stored chunk at positions [position, position + n_tokens)
  // of a sequence: every layer's K and V go to slots (one per token, as ForwardBatch::slots), keys
  // rotated by position - kv.position0 (rotate_keys). read_chunk_kv is the reverse, without
  // rotation: the KV at slots of tokens computed at positions position0.., ready for a ChunkStore
  // (typically after a prefill of the chunk alone). Both throw Error(kInvalidArgument) for a chunk
  // of another shape or a slot outside the pool (check_chunk_placement).
  void write_chunk_kv(const ChunkKv& kv, std::int32_t position, std::span<const std::int64_t> slots);
  [[nodiscard]] ChunkKv read_chunk_kv(std::span<const TokenId> tokens, std::int32_t position0,
                                      std::span<const std::int64_t> slots) const;

 private:
  [[nodiscard]] std::size_t block_floats() const;
  void check_block(BlockId b) const;
  // One layer's attention when batch.sparse is set: probed chunks with a sparse mask through
  // cpu::sparse_attention, every other sequence through cpu::paged_attention.
  void sparse_layer_attention(const ForwardBatch& batch, int layer, const cpu::PagedKv& cache, float scale);

  std::shared_ptr<const Model> model_;
  int num_blocks_;
  int block_size_;
  std::vector<float> inv_freq_;
  std::vector<std::vector<float>> k_cache_;  // per layer [num_blocks, block_size, n_kv_heads, head_dim]
  std::vector<std::vector<float>> v_cache_;
  // Activations, reused across steps so a decode step does not allocate.
  std::vector<float> x_, h_, q_, k_, v_, attn_, o_, gate_, up_;
  std::vector<float> probe_k_;  // a probed chunk's keys, contiguous [kv_len, n_kv_heads, head_dim]
};

}  // namespace chunkwise
