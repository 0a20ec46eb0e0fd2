// From a reuse plan to the backend's recompute rule: the SelectiveRecompute of the one prefill
// sequence whose batch rows are the prompt positions [begin, end).
#pragma once

#include <cstdint>

#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/policy/reuse/reuse_plan.hpp"

namespace chunkwise {

// Row r of the batch is prompt position begin + r. Every loaded span and always range is clipped to
// [begin, end) and shifted by -begin (a span cut by begin keeps its ratio over the rows left: the
// rows before begin are already in the cache, from the prefix cache or an earlier chunk of the
// prefill), empty ones are dropped, so chunks and always ranges cover every row exactly once as the
// backend requires. check_layer and min_tokens are copied; report is left null. The backend also
// needs the batch's logit rows to be always rows: true when end is the prompt's end and the prompt
// ends with a question. Throws Error(kInvalidArgument) for an invalid plan (ReusePlan::validate) or
// unless 0 <= begin < end <= plan.rows().
[[nodiscard]] SelectiveRecompute to_selective_recompute(const ReusePlan& plan, std::int32_t begin,
                                                        std::int32_t end);

}  // namespace chunkwise
