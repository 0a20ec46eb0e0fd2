// The candidate set every stock eviction policy keeps: blocks ordered by a policy-specific key,
// victim = smallest key. Re-ranking a block is erase + insert, both O(log n).
#pragma once

#include <optional>
#include <set>
#include <unordered_map>
#include <utility>

#include "chunkwise/core/types.hpp"

namespace chunkwise::detail {

template <class Key>
class RankedCandidates {
 public:
  void put(BlockId b, const Key& key) {
    erase(b);
    rank_.emplace(b, key);
    order_.emplace(key, b);
  }
  void erase(BlockId b) {
    auto it = rank_.find(b);
    if (it == rank_.end()) return;
    order_.erase({it->second, b});
    rank_.erase(it);
  }
  [[nodiscard]] bool contains(BlockId b) const { return rank_.contains(b); }
  [[nodiscard]] std::optional<BlockId> first() const {
    if (order_.empty()) return std::nullopt;
    return order_.begin()->second;
  }
  [[nodiscard]] const Key& key(BlockId b) const { return rank_.at(b); }
  [[nodiscard]] std::size_t size() const { return rank_.size(); }

 private:
  std::unordered_map<BlockId, Key> rank_;
  std::set<std::pair<Key, BlockId>> order_;
};

}  // namespace chunkwise::detail
