// What InferenceSession needs from a backend: a paged KV cache of a given shape and one
// forward pass over a ragged batch that writes the wanted logits rows.
#pragma once

#include <concepts>
#include <memory>
#include <span>

#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise {

template <class B>
concept Backend = std::constructible_from < B,
        std::shared_ptr<const Model>,
int, int > &&requires(B b, const B& cb, const ForwardBatch& batch, std::span<float> logits) {
  b.forward(batch, logits);
  { cb.num_blocks() } -> std::convertible_to<int>;
  { cb.block_size() } -> std::convertible_to<int>;
};

}  // namespace chunkwise
