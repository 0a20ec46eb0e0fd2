// Fixed-size KV blocks with reference counts. Allocation and release are O(1): a stack of free
// ids. The pool only counts; the KV bytes live in the backend, indexed by BlockId.
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
  explicit BlockPool(int num_blocks) : refcount_(static_cast<std::size_t>(num_blocks), 0) {
    check(num_blocks > 0, ErrorCode::kInvalidArgument, "block pool needs at least one block");
    free_.reserve(refcount_.size());
    // Hand out low ids first, which keeps a small working set compact in memory.
    for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
  }

  [[nodiscard]] int total() const { return static_cast<int>(refcount_.size()); }
  [[nodiscard]] int free_count() const { return static_cast<int>(free_.size()); }
  [[nodiscard]] int used() const { return total() - free_count(); }
  [[nodiscard]] int refcount(BlockId b) const { return refcount_.at(index(b)); }

  // A block with refcount 1, or nullopt when none is free.
  [[nodiscard]] std::optional<BlockId> allocate() {
    if (free_.empty()) return std::nullopt;
    const BlockId b = free_.back();
    free_.pop_back();
    refcount_[index(b)] = 1;
    return b;
  }

  void retain(BlockId b) {
    auto& rc = refcount_.at(index(b));
    check(rc > 0, ErrorCode::kInvalidArgument, "retain of a free KV block");
    ++rc;
  }

  // Drops one reference; the block returns to the free list when none is left.
  void release(BlockId b) {
    auto& rc = refcount_.at(index(b));
    check(rc > 0, ErrorCode::kInvalidArgument, "release of a free KV block " + std::to_string(b));
    if (--rc == 0) free_.push_back(b);
  }

  // free + in-use = total, no negative count, free list holds exactly the zero-count blocks.
  [[nodiscard]] bool invariants_hold() const {
    std::size_t zero = 0;
    for (int rc : refcount_) {
      if (rc < 0) return false;
      zero += rc == 0 ? 1 : 0;
    }
    if (zero != free_.size()) return false;
    for (BlockId b : free_)
      if (refcount_[index(b)] != 0) return false;
    return true;
  }

 private:
  [[nodiscard]] std::size_t index(BlockId b) const {
    check(b >= 0 && static_cast<std::size_t>(b) < refcount_.size(), ErrorCode::kInvalidArgument,
          "KV block id " + std::to_string(b) + " out of range");
    return static_cast<std::size_t>(b);
  }

  std::vector<int> refcount_;
  std::vector<BlockId> free_;
};

}  // namespace chunkwise
