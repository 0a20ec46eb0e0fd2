// The four policy families of InferenceSession. A policy reads a view and returns a plan; it
// never touches the model or the KV bytes, so it is testable without either.
#pragma once

#include <concepts>
#include <optional>

#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/eviction/block_info.hpp"
#include "chunkwise/policy/reuse/reuse_plan.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/sched/step_plan.hpp"

namespace chunkwise {

// Which sequences run this step and how many tokens of each.
template <class P>
concept BatchingPolicy = requires(P p, const SchedulerView& view) {
  { p.plan(view) } -> std::same_as<StepPlan>;
};

// Which unreferenced cached KV block goes first when memory runs short.
template <class P>
concept EvictionPolicy = requires(P p, BlockId b, const BlockInfo& info) {
  p.on_cached(b, info);
  p.on_hit(b, info);
  p.on_unreferenced(b, info);
  p.on_removed(b);
  { p.pick_victim() } -> std::same_as<std::optional<BlockId>>;
};

// Which key blocks each query block attends to during prefill.
template <class P>
concept SparsePolicy = requires(P p, const AttentionProbe& probe) {
  { p.select(probe) } -> std::same_as<BlockMask>;
};

// How a prompt made of known chunks gets its KV.
template <class P>
concept ReusePolicy = requires(P p, const PromptLayout& layout, const ChunkStore& store) {
  { p.plan(layout, store) } -> std::same_as<ReusePlan>;
};

}  // namespace chunkwise
