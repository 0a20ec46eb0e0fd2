// Cost-aware eviction (Cache-Craft, SIGMOD 2025; vLLM PR 27539): keep the blocks whose reuse saves
// the most compute per byte. Value = decayed reuse frequency x recompute cost / bytes, where
//  - frequency counts the insertion and every hit, each weight halving every half_life_s;
//  - recompute cost of a block of t tokens after p tokens is t * (1 + (p + t/2) / attention_tokens):
//    the projections cost the same per token, attention grows with the context it reads, and
//    attention_tokens is the context length at which both cost the same (about 4 * d_model * n_layers
//    attention FLOPs against 2 * parameters per token: ~4K for SmolLM2-135M and for Llama-3-8B).
// The smallest value goes first. Since every weight decays at the same rate, ranks are kept in
// log space relative to time 0 and never need refreshing: log f(t) = log f(t0) - (t - t0) ln2 / h.
#pragma once

#include <cmath>
#include <optional>
#include <unordered_map>
#include <utility>

#include "chunkwise/core/error.hpp"
#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/eviction/block_info.hpp"
#include "chunkwise/policy/eviction/detail/ranked_candidates.hpp"

namespace chunkwise {

class CostAwareEviction {
 public:
  explicit CostAwareEviction(double half_life_s = 60.0, double attention_tokens = 4096.0)
      : decay_(std::log(2.0) / half_life_s), attention_tokens_(attention_tokens) {
    check(half_life_s > 0 && std::isfinite(half_life_s), ErrorCode::kInvalidArgument,
          "CostAwareEviction: half_life_s must be a positive number");
    check(attention_tokens > 0 && std::isfinite(attention_tokens), ErrorCode::kInvalidArgument,
          "CostAwareEviction: attention_tokens must be a positive number");
  }

  void on_cached(BlockId b, const BlockInfo& info) {
    state_[b] = Use{0.0, info.now_s};
    touch(b, info);
  }
  void on_hit(BlockId b, const BlockInfo& info) { touch(b, info); }
  void on_evictable(BlockId b, const BlockInfo& info) {
    if (!state_.contains(b)) touch(b, info);  // never reported cached: counts as one use now
    const Use& u = state_.at(b);
    const double cost = info.tokens * (1.0 + (static_cast<double>(info.tokens_before) + info.tokens / 2.0) /
                                                 attention_tokens_);
    const double bytes = info.bytes > 0 ? static_cast<double>(info.bytes) : 1.0;
    // log(frequency at time 0) + log(cost per byte).
    candidates_.put(b, {std::log(u.freq) + decay_ * u.time + std::log(cost / bytes), -info.depth});
  }
  void on_pinned(BlockId b) { candidates_.erase(b); }
  void on_removed(BlockId b) {
    candidates_.erase(b);
    state_.erase(b);
  }
  [[nodiscard]] std::optional<BlockId> pick_victim(double /*now_s*/) { return candidates_.first(); }
  [[nodiscard]] std::size_t num_candidates() const { return candidates_.size(); }

  // The decayed use count of a block at time now_s (0 when unknown); for tests and reports.
  [[nodiscard]] double frequency(BlockId b, double now_s) const {
    auto it = state_.find(b);
    return it == state_.end() ? 0.0 : it->second.freq * std::exp(-decay_ * (now_s - it->second.time));
  }

 private:
  struct Use {
    double freq = 0;  // decayed count at `time`
    double time = 0;
  };
  void touch(BlockId b, const BlockInfo& info) {
    Use& u = state_[b];
    u.freq = u.freq * std::exp(-decay_ * (info.now_s - u.time)) + 1.0;
    u.time = info.now_s;
  }

  double decay_;
  double attention_tokens_;
  std::unordered_map<BlockId, Use> state_;
  detail::RankedCandidates<std::pair<double, int>> candidates_;  // (log value, -depth)
};

}  // namespace chunkwise
