// A stock sparse policy described as data: what a backend needs to build the policy's masks on its
// own device, inside the step, with no host round trip (the CUDA backend does; a custom policy
// without a pattern goes through the host probe instead).
#pragma once

#include <variant>

#include "chunkwise/policy/sparse/block_topk_attention.hpp"
#include "chunkwise/policy/sparse/flex_prefill_attention.hpp"
#include "chunkwise/policy/sparse/streaming_attention.hpp"
#include "chunkwise/policy/sparse/vertical_slash_attention.hpp"

namespace chunkwise {

using SparsePattern = std::variant<StreamingAttentionParams, VerticalSlashAttentionParams,
                                   BlockTopKAttentionParams, FlexPrefillAttentionParams>;

// The pattern of a policy that has one (the four stock policies), else nullopt.
template <class P>
concept DescribedSparsePolicy = requires(const P& p) {
  { p.pattern() } -> std::convertible_to<SparsePattern>;
};

}  // namespace chunkwise
