#pragma once

#include <memory>
#include <span>
#include <vector>

#include "chunkwise/model/model.hpp"

namespace chunkwise {

// Logits [tokens, vocab] of every position of one prompt, in one CPU forward pass over a
// fresh paged cache: what `chunkwise logits` writes and what the oracle tests compare.
std::vector<float> prompt_logits(std::shared_ptr<const Model> model, std::span<const TokenId> tokens,
                                 int block_size = 16);

}  // namespace chunkwise
