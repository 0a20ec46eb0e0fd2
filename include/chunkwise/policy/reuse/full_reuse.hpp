// Full reuse without recompute (the ablation of CacheBlend's paper: fast and wrong): every chunk
// segment the store holds is loaded and none of its rows is recomputed past layer 0 (ratio 0,
// min_tokens 0, check_layer 0: layer 0 still runs every row, the least the backend does). The
// chunks' tokens never see the other chunks, so quality drops with the cross-chunk attention the
// task needs. The prefix, the question and the chunks not in the store are computed normally.
#pragma once

#include "chunkwise/policy/reuse/reuse_plan.hpp"

namespace chunkwise {

struct FullReuse {
  [[nodiscard]] ReusePlan plan(const PromptLayout& layout, const ChunkStore& store) const {
    return make_reuse_plan(layout, stored_chunks(layout, store), /*check_layer=*/0, /*min_tokens=*/0);
  }
};

}  // namespace chunkwise
