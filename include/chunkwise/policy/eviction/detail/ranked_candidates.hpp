// The candidate set every stock eviction policy keeps: blocks ordered by a policy-specific key,
// victim = smallest (key, id). An indexed binary heap over dense block ids: put, erase and
// re-rank are O(log n) in flat arrays, and the victim is O(1) (a red-black tree plus a hash map
// cost about twice as much per eviction at a million cached blocks).
#pragma once

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

#include "chunkwise/core/types.hpp"

namespace chunkwise::detail {

template <class Key>
class RankedCandidates {
 public:
  void put(BlockId b, const Key& key) {
    const auto i = static_cast<std::size_t>(b);
    if (i >= pos_.size()) pos_.resize(i + 1, kAbsent);
    if (pos_[i] == kAbsent) {
      pos_[i] = heap_.size();
      heap_.emplace_back(key, b);
      up(pos_[i]);
      return;
    }
    const std::size_t at = pos_[i];
    heap_[at].first = key;
    up(at);
    down(pos_[i]);
  }
  void erase(BlockId b) {
    if (!contains(b)) return;
    const std::size_t at = pos_[static_cast<std::size_t>(b)];
    pos_[static_cast<std::size_t>(b)] = kAbsent;
    if (at + 1 == heap_.size()) {
      heap_.pop_back();
      return;
    }
    heap_[at] = std::move(heap_.back());
    heap_.pop_back();
    pos_[static_cast<std::size_t>(heap_[at].second)] = at;
    up(at);
    down(pos_[static_cast<std::size_t>(heap_[at].second)]);
  }
  [[nodiscard]] bool contains(BlockId b) const {
    return b >= 0 && static_cast<std::size_t>(b) < pos_.size() && pos_[static_cast<std::size_t>(b)] != kAbsent;
  }
  [[nodiscard]] std::optional<BlockId> first() const {
    if (heap_.empty()) return std::nullopt;
    return heap_.front().second;
  }
  [[nodiscard]] const Key& key(BlockId b) const { return heap_[pos_.at(static_cast<std::size_t>(b))].first; }
  [[nodiscard]] std::size_t size() const { return heap_.size(); }

 private:
  static constexpr std::size_t kAbsent = static_cast<std::size_t>(-1);

  void place(std::size_t at, std::pair<Key, BlockId>&& e) {
    pos_[static_cast<std::size_t>(e.second)] = at;
    heap_[at] = std::move(e);
  }
  void up(std::size_t at) {
    auto e = std::move(heap_[at]);
    while (at > 0) {
      const std::size_t parent = (at - 1) / 2;
      if (!(e < heap_[parent])) break;
      place(at, std::move(heap_[parent]));
      at = parent;
    }
    place(at, std::move(e));
  }
  void down(std::size_t at) {
    auto e = std::move(heap_[at]);
    const std::size_t n = heap_.size();
    for (;;) {
      std::size_t child = 2 * at + 1;
      if (child >= n) break;
      if (child + 1 < n && heap_[child + 1] < heap_[child]) ++child;
      if (!(heap_[child] < e)) break;
      place(at, std::move(heap_[child]));
      at = child;
    }
    place(at, std::move(e));
  }

  std::vector<std::pair<Key, BlockId>> heap_;
  std::vector<std::size_t> pos_;  // by block id: index in heap_, or kAbsent
};

}  // namespace chunkwise::detail
