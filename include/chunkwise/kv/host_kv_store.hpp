// Host-RAM copies of KV blocks, in fixed slots. Two users: the host tier of the prefix cache
// (HostKvTier below: evicted prefix blocks, least recently used dropped first) and swap space
// for preempted sequences.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "chunkwise/core/types.hpp"

namespace chunkwise::kv {

class HostBlockStore {
 public:
  HostBlockStore(int capacity, std::size_t bytes_per_block)
      : bytes_per_block_(bytes_per_block), data_(static_cast<std::size_t>(capacity) * bytes_per_block) {
    for (int s = capacity - 1; s >= 0; --s) free_.push_back(s);
  }
  [[nodiscard]] std::optional<int> allocate() {
    if (free_.empty()) return std::nullopt;
    const int s = free_.back();
    free_.pop_back();
    return s;
  }
  void release(int slot) { free_.push_back(slot); }
  [[nodiscard]] std::span<std::byte> bytes(int slot) {
    return {data_.data() + static_cast<std::size_t>(slot) * bytes_per_block_, bytes_per_block_};
  }
  [[nodiscard]] int free_count() const { return static_cast<int>(free_.size()); }
  [[nodiscard]] int capacity() const {
    return bytes_per_block_ == 0 ? 0 : static_cast<int>(data_.size() / bytes_per_block_);
  }

 private:
  std::size_t bytes_per_block_;
  std::vector<std::byte> data_;
  std::vector<int> free_;
};

// Prefix blocks evicted from the device, keyed like the prefix index (chain hash, parent hash,
// tokens) so a lookup that runs past the device index can continue here.
class HostKvTier {
 public:
  HostKvTier(int capacity, std::size_t bytes_per_block) : store_(capacity, bytes_per_block) {}

  // Stores a block; `fill` writes its bytes. The least recently used entry makes room.
  template <class Fill>
  void put(std::uint64_t hash, std::uint64_t parent, std::span<const TokenId> tokens, Fill&& fill) {
    if (store_.capacity() == 0) return;
    if (auto it = entries_.find(hash); it != entries_.end()) {
      touch(it->second);
      return;
    }
    auto slot = store_.allocate();
    if (!slot) {
      const std::uint64_t old = lru_.back();
      lru_.pop_back();
      auto it = entries_.find(old);
      store_.release(it->second.slot);
      entries_.erase(it);
      slot = store_.allocate();
    }
    fill(store_.bytes(*slot));
    lru_.push_front(hash);
    entries_.emplace(hash, Entry{*slot, parent, {tokens.begin(), tokens.end()}, lru_.begin()});
  }

  // The bytes of the block holding `tokens` after `parent`, if stored.
  [[nodiscard]] std::optional<std::span<const std::byte>> find(std::uint64_t hash, std::uint64_t parent,
                                                               std::span<const TokenId> tokens) {
    auto it = entries_.find(hash);
    if (it == entries_.end() || it->second.parent != parent ||
        !std::equal(tokens.begin(), tokens.end(), it->second.tokens.begin(), it->second.tokens.end()))
      return std::nullopt;
    touch(it->second);
    return store_.bytes(it->second.slot);
  }

  [[nodiscard]] std::size_t size() const { return entries_.size(); }
  [[nodiscard]] int capacity() const { return store_.capacity(); }

 private:
  struct Entry {
    int slot = 0;
    std::uint64_t parent = 0;
    std::vector<TokenId> tokens;
    std::list<std::uint64_t>::iterator pos;
  };
  void touch(Entry& e) { lru_.splice(lru_.begin(), lru_, e.pos); }

  HostBlockStore store_;
  std::list<std::uint64_t> lru_;  // most recent first
  std::unordered_map<std::uint64_t, Entry> entries_;
};

}  // namespace chunkwise::kv
