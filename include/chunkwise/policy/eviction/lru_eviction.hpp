// Least-recently-used eviction of unreferenced cached blocks (vLLM's and SGLang's default).
// Among blocks last used at the same time the deeper one goes first, so when a request ends
// its tail is dropped before the prefix it shares with others (vLLM frees in reverse order).
#pragma once

#include <optional>
#include <utility>

#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/eviction/block_info.hpp"
#include "chunkwise/policy/eviction/detail/ranked_candidates.hpp"

namespace chunkwise {

class LruEviction {
 public:
  void on_cached(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_hit(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_evictable(BlockId b, const BlockInfo& info) { candidates_.put(b, {info.last_use_s, -info.depth}); }
  void on_pinned(BlockId b) { candidates_.erase(b); }
  void on_removed(BlockId b) { candidates_.erase(b); }
  [[nodiscard]] std::optional<BlockId> pick_victim(double /*now_s*/) { return candidates_.first(); }
  [[nodiscard]] std::size_t num_candidates() const { return candidates_.size(); }

 private:
  detail::RankedCandidates<std::pair<double, int>> candidates_;  // (last use, -depth)
};

}  // namespace chunkwise
