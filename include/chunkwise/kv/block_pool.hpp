// Fixed-size KV blocks with reference counts. A block is in one of three states:
//  - free:   on the free stack, holds nothing;
//  - in use: referenced by at least one sequence;
//  - cached: unreferenced, but its KV is kept because the prefix index points at it.
// Every transition is O(1). The pool only counts; the KV bytes live in the backend, indexed
// by BlockId, and the prefix index decides which blocks are cached.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/core/types.hpp"

namespace chunkwise {

class BlockPool {
 public:
  explicit BlockPool(int num_blocks) : refcount_(checked_size(num_blocks), 0), indexed_(refcount_.size(), 0) {
    free_.reserve(refcount_.size());
    // Hand out low ids first, which keeps a small working set compact in memory.
    for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
  }

  [[nodiscard]] int total() const { return static_cast<int>(refcount_.size()); }
  [[nodiscard]] int free_count() const { return static_cast<int>(free_.size()); }
  [[nodiscard]] int cached_count() const { return cached_; }
  [[nodiscard]] int in_use() const { return total() - free_count() - cached_; }
  [[nodiscard]] int used() const { return total() - free_count(); }  // in use or cached
  [[nodiscard]] int refcount(BlockId b) const { return refcount_.at(index(b)); }
  [[nodiscard]] bool indexed(BlockId b) const { return indexed_.at(index(b)) != 0; }

  // A block with refcount 1, or nullopt when none is free (cached blocks must be evicted first).
  [[nodiscard]] std::optional<BlockId> allocate() {
    if (free_.empty()) return std::nullopt;
    const BlockId b = free_.back();
    free_.pop_back();
    refcount_[index(b)] = 1;
    return b;
  }

  // One more reference to a block in use, or the first one to a cached block.
  void retain(BlockId b) {
    const std::size_t i = index(b);
    check(refcount_[i] > 0 || indexed_[i] != 0, ErrorCode::kInvalidArgument,
          [&] { return "retain of a free KV block " + std::to_string(b); });
    if (refcount_[i]++ == 0) --cached_;
  }

  // Drops one reference and returns how many are left. At zero the block becomes cached if the
  // prefix index holds it, free otherwise.
  int release(BlockId b) {
    const std::size_t i = index(b);
    check(refcount_[i] > 0, ErrorCode::kInvalidArgument,
          "release of an unreferenced KV block " + std::to_string(b));
    if (--refcount_[i] == 0) {
      if (indexed_[i] != 0)
        ++cached_;
      else
        free_.push_back(b);
    }
    return refcount_[i];
  }

  // The prefix index now points at this block (which is in use).
  void mark_indexed(BlockId b) {
    const std::size_t i = index(b);
    check(refcount_[i] > 0 && indexed_[i] == 0, ErrorCode::kInvalidArgument,
          "only an unindexed block in use can enter the prefix index");
    indexed_[i] = 1;
  }

  // The prefix index dropped this cached block: it becomes free.
  void drop_cached(BlockId b) {
    const std::size_t i = index(b);
    check(refcount_[i] == 0 && indexed_[i] != 0, ErrorCode::kInvalidArgument,
          "only a cached block can be dropped from the prefix index");
    indexed_[i] = 0;
    --cached_;
    free_.push_back(b);
  }

  // free + cached + in use = total, no negative count, the free stack holds exactly the
  // unreferenced unindexed blocks, and the cached count matches a recount.
  [[nodiscard]] bool invariants_hold() const {
    std::size_t unindexed_zero = 0;
    int cached = 0;
    for (std::size_t i = 0; i < refcount_.size(); ++i) {
      if (refcount_[i] < 0) return false;
      if (refcount_[i] == 0 && indexed_[i] != 0) ++cached;
      if (refcount_[i] == 0 && indexed_[i] == 0) ++unindexed_zero;
    }
    if (cached != cached_ || unindexed_zero != free_.size()) return false;
    for (BlockId b : free_)
      if (refcount_[index(b)] != 0 || indexed_[index(b)] != 0) return false;
    return free_count() + cached_count() + in_use() == total();
  }

 private:
  static std::size_t checked_size(int n) {
    check(n > 0, ErrorCode::kInvalidArgument, "block pool needs at least one block");
    return static_cast<std::size_t>(n);
  }
  [[nodiscard]] std::size_t index(BlockId b) const {
    check(b >= 0 && static_cast<std::size_t>(b) < refcount_.size(), ErrorCode::kInvalidArgument,
          [&] { return "KV block id " + std::to_string(b) + " out of range"; });
    return static_cast<std::size_t>(b);
  }

  std::vector<int> refcount_;
  std::vector<std::uint8_t> indexed_;
  std::vector<BlockId> free_;
  int cached_ = 0;
};

}  // namespace chunkwise
