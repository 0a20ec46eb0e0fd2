// Sampling parameters and the sampler: greedy, or temperature with top-k and top-p, seeded per
// request so that a request draws the same tokens whatever batch it runs in.
#pragma once

#include <cstdint>

#include "chunkwise/core/types.hpp"

namespace chunkwise {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  std::uint64_t seed = 0;
};

// One row to sample: its parameters and the index of the token being generated (see sample()).
struct SampleRow {
  SamplingParams params;
  std::uint64_t step = 0;
};

// Throws Error(kInvalidArgument) for negative temperature, negative top_k, top_p outside (0, 1].
void validate(const SamplingParams& params);

// Picks the next token from logits[vocab]. The random draw depends only on (seed, step):
// step is the index of the token being generated within its request.
TokenId sample(const float* logits, int vocab, const SamplingParams& params, std::uint64_t step);

}  // namespace chunkwise
