// What InferenceSession needs from a backend: a paged KV cache of a given shape, one forward
// pass over a ragged batch that writes the wanted logits rows, and block moves (copy-on-write,
// host tier, swap) in the byte layout of its own choosing, kv_bytes_per_block bytes per block.
#pragma once

#include <concepts>
#include <cstddef>
#include <memory>
#include <span>

#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise {

template <class B>
concept Backend = std::constructible_from < B,
        std::shared_ptr<const Model>,
int, int > &&requires(B b, const B& cb, const ForwardBatch& batch, std::span<float> logits, BlockId id,
                      std::span<std::byte> out, std::span<const std::byte> in, const ModelConfig& config) {
  b.forward(batch, logits);
  b.copy_block(id, id);
  cb.save_block(id, out);
  b.load_block(id, in);
  { B::kv_bytes_per_block(config, 16) } -> std::convertible_to<std::size_t>;
  { cb.num_blocks() } -> std::convertible_to<int>;
  { cb.block_size() } -> std::convertible_to<int>;
};

}  // namespace chunkwise
