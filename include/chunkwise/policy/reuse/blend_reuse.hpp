// Selective recompute of the tokens whose KV deviates most (CacheBlend, METHODS 2.6, in LMCache's
// production form): every chunk segment the store holds is loaded; the backend recomputes, per
// chunk, the `ratio` share of its rows whose post-RoPE keys deviate most from the loaded ones at
// check_layer (at least min_tokens loaded rows in all), plus the prefix, the question and the chunks
// not in the store. Defaults are LMCache's: ratio 0.15 (the paper's quality floor r* = 15%),
// min_tokens 256 (blend_min_tokens), check layer 1. Ratio 1 recomputes every row: a full prefill,
// bit for bit (the experiment's control); ratio 0 with min_tokens 0 is FullReuse at check layer 1.
// `gradual` turns on the paper's gradual filtering (SelectiveRecompute::gradual): e.g. {2} keeps
// 2 x ratio of each chunk at check_layer and ratio among those at check_layer + 1; the registry's
// "blend-gradual" is BlendReuse with {2}. Not done: the paper's loading controller (choosing r so
// that recompute hides under KV loading).
#pragma once

#include <cstdint>
#include <vector>

#include "chunkwise/policy/reuse/reuse_plan.hpp"

namespace chunkwise {

struct BlendReuseParams {
  double ratio = 0.15;            // share of each loaded chunk's rows recomputed, in [0, 1]
  std::int32_t min_tokens = 256;  // >= 0
  int check_layer = 1;            // >= 0 (the backend checks it against the model's layers)
  std::vector<double> gradual;    // multiples of ratio, finite, >= 1, not increasing; empty: one check
};

class BlendReuse {
 public:
  using Params = BlendReuseParams;
  BlendReuse() : BlendReuse(Params{}) {}
  // Throws Error(kInvalidArgument) for a parameter outside its range.
  explicit BlendReuse(Params params);
  [[nodiscard]] ReusePlan plan(const PromptLayout& layout, const ChunkStore& store) const;
  [[nodiscard]] const Params& params() const { return p_; }

 private:
  Params p_;
};

}  // namespace chunkwise
