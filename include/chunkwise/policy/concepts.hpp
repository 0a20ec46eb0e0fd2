// The four policy families of InferenceSession. A policy reads a view and returns a plan; it
// never touches the model or the KV bytes, so it is testable without either.
#pragma once

#include <concepts>
#include <optional>

#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/eviction/block_info.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/sched/step_plan.hpp"

namespace chunkwise {

// The reuse family's types (chunkwise/policy/reuse/reuse_plan.hpp) are only declared here: the plan
// names chunks by ChunkKey, so reuse_plan.hpp includes chunkwise/kv/chunk_store.hpp, which includes
// this header for EvictionPolicy.
struct PromptLayout;
struct ReusePlan;
class ChunkStore;

// Which sequences run this step and how many tokens of each.
template <class P>
concept BatchingPolicy = requires(P p, const SchedulerView& view) {
  { p.plan(view) } -> std::same_as<StepPlan>;
};

// Which cached KV block goes first when memory runs short. The KV cache reports events; only
// unreferenced leaves of the prefix tree are ever candidates, and the cache decides which those are:
//  on_cached:    the block entered the prefix index (it is referenced then);
//  on_hit:       a lookup reused it;
//  on_evictable: it is now an unreferenced leaf; reported again when its info (demand) changes;
//  on_pinned:    it stopped being a candidate (referenced again, or it gained a child);
//  on_removed:   it left the index (evicted or cleared);
//  pick_victim:  the candidate to evict at time now_s, or nullopt when there is none.
template <class P>
concept EvictionPolicy = requires(P p, const P& cp, BlockId b, const BlockInfo& info, double now_s) {
  p.on_cached(b, info);
  p.on_hit(b, info);
  p.on_evictable(b, info);
  p.on_pinned(b);
  p.on_removed(b);
  { p.pick_victim(now_s) } -> std::same_as<std::optional<BlockId>>;
  { cp.num_candidates() } -> std::convertible_to<std::size_t>;
};

// Which key tiles each query tile attends to during prefill: a mask per chunk, from a probe of
// the chunk's queries and every key before it. tile() is the tile size of its masks (64 or 128);
// chunks with fewer than min_kv_len() keys are attended densely without asking.
template <class P>
concept SparsePolicy = requires(P p, const P& cp, const AttentionProbe& probe) {
  { p.select(probe) } -> std::same_as<BlockMask>;
  { cp.tile() } -> std::convertible_to<int>;
  { cp.min_kv_len() } -> std::convertible_to<int>;
};

// How a prompt made of known chunks gets its KV: which chunk segments load their KV from the store
// and how much of them the backend recomputes (reuse_plan.hpp). plan() reads the store's index
// only (tier()/contains()), never the KV bytes.
template <class P>
concept ReusePolicy = requires(P p, const PromptLayout& layout, const ChunkStore& store) {
  { p.plan(layout, store) } -> std::same_as<ReusePlan>;
};

}  // namespace chunkwise
