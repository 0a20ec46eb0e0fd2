// Explicit prefix lifetime (BatchLLM, MLSys 2026): a cached prefix stays while requests that
// contain it are queued or running, and goes first once its group is done. The KV cache passes
// that demand (from the scheduler's queues) in BlockInfo::demand and re-reports a candidate when
// its demand changes. Blocks nobody waits for go first, least recently used first; a block that
// is still wanted goes only when nothing else is left, the least wanted first.
#pragma once

#include <optional>
#include <tuple>

#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/eviction/block_info.hpp"
#include "chunkwise/policy/eviction/detail/ranked_candidates.hpp"

namespace chunkwise {

class PrefixLifetimeEviction {
 public:
  void on_cached(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_hit(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_evictable(BlockId b, const BlockInfo& info) {
    candidates_.put(b, {info.demand, info.last_use_s, -info.depth});
  }
  void on_pinned(BlockId b) { candidates_.erase(b); }
  void on_removed(BlockId b) { candidates_.erase(b); }
  [[nodiscard]] std::optional<BlockId> pick_victim(double /*now_s*/) { return candidates_.first(); }
  [[nodiscard]] std::size_t num_candidates() const { return candidates_.size(); }

 private:
  detail::RankedCandidates<std::tuple<int, double, int>> candidates_;  // (demand, last use, -depth)
};

}  // namespace chunkwise
