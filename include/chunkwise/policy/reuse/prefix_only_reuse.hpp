// The baseline: only an exact cached prefix is reused (by the prefix cache); no chunk KV is
// loaded from the chunk store and nothing is recomputed selectively.
#pragma once

#include "chunkwise/policy/reuse/reuse_plan.hpp"

namespace chunkwise {

struct PrefixOnlyReuse {
  ReusePlan plan(const PromptLayout& /*layout*/, const ChunkStore& /*store*/) const { return {}; }
};

}  // namespace chunkwise
