// Placing a reuse plan's chunks into one sequence's cache: what InferenceSession does at a reuse
// prefill and what reuse_logits() does for the quality harness, so both measure the same path.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "chunkwise/backend/concepts.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/policy/reuse/loading_control.hpp"
#include "chunkwise/policy/reuse/reuse_plan.hpp"
#include "chunkwise/sched/session_metrics.hpp"

namespace chunkwise::detail {

// The prompt's rows [begin, prompt.size()) are about to be prefilled at slots (one per row); rows
// before begin are in the cache already (a cached prefix). Every planned span that ends after begin
// and before the last row (whose logits are sampled, so it is always computed) is placed: from the
// backend's device tier when it keeps the key, else from the store (then kept in the tier). A span
// cut by begin places only its rows from begin. A span the store no longer has (evicted, a corrupt
// file) is skipped and counted as missed: the caller computes it normally. Returns the spans
// placed, clipped to begin, in order; counts in stats. With a meter (and its clock), each whole
// chunk placed from the host or disk tier is timed into it.
template <ChunkKvBackend B>
std::vector<ReusePlan::LoadSpan> place_planned_chunks(B& backend, ChunkStore& store,
                                                      std::span<const TokenId> prompt, const ReusePlan& plan,
                                                      std::int32_t begin, std::span<const std::int64_t> slots,
                                                      ReuseStats& stats, LoadCostMeter* meter = nullptr,
                                                      const std::function<double()>& clock = {}) {
  const auto prompt_len = static_cast<std::int32_t>(prompt.size());
  std::vector<ReusePlan::LoadSpan> placed;
  for (const ReusePlan::LoadSpan& span : plan.load) {
    if (span.end <= begin || span.end >= prompt_len) continue;
    const std::int32_t from = std::max(span.begin, begin);
    const auto at =
        slots.subspan(static_cast<std::size_t>(from - begin), static_cast<std::size_t>(span.end - from));
    bool kept = false;
    if constexpr (ChunkTierBackend<B>)
      kept = from == span.begin && backend.write_kept_chunk_kv(span.key, from, at);
    if (kept) {
      stats.device_hits++;
    } else {
      const ChunkTier tier = meter != nullptr ? store.tier(span.key) : ChunkTier::kNone;
      const double t0 = meter != nullptr ? clock() : 0.0;
      const std::shared_ptr<const ChunkKv> kv =
          store.get(span.key, prompt.subspan(static_cast<std::size_t>(span.begin),
                                             static_cast<std::size_t>(span.end - span.begin)));
      if (kv == nullptr) {
        stats.chunks_missed++;
        continue;
      }
      if (from == span.begin) {
        backend.write_chunk_kv(*kv, from, at);
        if (meter != nullptr) meter->observe_load(tier, kv->bytes(), clock() - t0);
        if constexpr (ChunkTierBackend<B>) backend.keep_chunk_kv(span.key, *kv);
      } else {
        backend.write_chunk_kv(kv->rows(from - span.begin, span.end - span.begin), from, at);
      }
    }
    stats.chunks_loaded++;
    stats.tokens_loaded += span.end - from;
    placed.push_back(span);
    placed.back().begin = from;
  }
  return placed;
}

}  // namespace chunkwise::detail
