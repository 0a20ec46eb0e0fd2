#pragma once

#include <memory>
#include <span>
#include <vector>

#include "chunkwise/backend/any_backend.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise {

// Logits [tokens, vocab] of every position of one prompt, in one forward pass over a fresh
// paged cache on the provider's device (null: the CPU reference): what `chunkwise logits` writes,
// what the oracle tests compare, and how the GPU is checked against the CPU. With chunk > 0 the
// prompt is prefilled in chunks of that many tokens (a chunked prefill); with a sparse selector
// every chunk's attention goes through it (ForwardBatch::sparse). Only the positions from
// first_logit on get logits: the result is [tokens - first_logit, vocab].
std::vector<float> prompt_logits(std::shared_ptr<const Model> model, std::span<const TokenId> tokens,
                                 int block_size = 16, const BackendProvider* provider = nullptr,
                                 SparseSelector* sparse = nullptr, int chunk = 0, int first_logit = 0);

}  // namespace chunkwise
