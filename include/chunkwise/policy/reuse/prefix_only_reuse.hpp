// The baseline: only an exact cached prefix is reused (by the prefix cache); no chunk KV is
// loaded from the chunk store and nothing is recomputed selectively: the plan computes every row
// normally (reuses() is false, so the session runs a plain prefill).
#pragma once

#include "chunkwise/policy/reuse/reuse_plan.hpp"

namespace chunkwise {

struct PrefixOnlyReuse {
  ReusePlan plan(const PromptLayout& layout, const ChunkStore& /*store*/) const {
    ReusePlan p;
    if (layout.size() > 0) p.always.push_back({0, layout.size()});
    return p;
  }
};

}  // namespace chunkwise
