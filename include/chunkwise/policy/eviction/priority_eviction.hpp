// Priority eviction with a retention time (TensorRT-LLM's KvCacheRetentionConfig, SGLang PR
// 21045): a block keeps the highest priority of the requests that used it for retention_s
// after its last use, then falls back to default_priority. Lowest effective priority goes
// first, least recently used among equals. Higher priority = kept longer.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "chunkwise/core/error.hpp"
#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/eviction/block_info.hpp"
#include "chunkwise/policy/eviction/detail/ranked_candidates.hpp"

namespace chunkwise {

class PriorityEviction {
 public:
  explicit PriorityEviction(double retention_s = 60.0, int default_priority = 0)
      : retention_s_(retention_s), default_priority_(default_priority) {
    check(retention_s >= 0 && !std::isnan(retention_s), ErrorCode::kInvalidArgument,
          "PriorityEviction: retention_s must be >= 0 (infinity keeps priorities forever)");
  }

  void on_cached(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_hit(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_evictable(BlockId b, const BlockInfo& info) {
    forget_expiry(b);
    const bool retained = info.priority != default_priority_ && retention_s_ > 0;
    candidates_.put(b, {retained ? info.priority : default_priority_, info.last_use_s, -info.depth});
    if (retained) expiry_.emplace(info.last_use_s + retention_s_, b);
  }
  void on_pinned(BlockId b) { on_removed(b); }
  void on_removed(BlockId b) {
    forget_expiry(b);
    candidates_.erase(b);
  }
  // Priorities whose retention ended by now_s fall back to the default before choosing.
  [[nodiscard]] std::optional<BlockId> pick_victim(double now_s) {
    while (!expiry_.empty() && expiry_.begin()->first <= now_s) {
      const BlockId b = expiry_.begin()->second;
      expiry_.erase(expiry_.begin());
      auto key = candidates_.key(b);
      std::get<0>(key) = default_priority_;
      candidates_.put(b, key);
    }
    return candidates_.first();
  }
  [[nodiscard]] std::size_t num_candidates() const { return candidates_.size(); }

 private:
  void forget_expiry(BlockId b) {
    if (!candidates_.contains(b)) return;
    const auto& [prio, last_use, neg_depth] = candidates_.key(b);
    if (prio != default_priority_) expiry_.erase({last_use + retention_s_, b});
  }

  double retention_s_;
  int default_priority_;
  detail::RankedCandidates<std::tuple<int, double, int>> candidates_;  // (priority, last use, -depth)
  std::set<std::pair<double, BlockId>> expiry_;                        // (end of retention, block)
};

}  // namespace chunkwise
