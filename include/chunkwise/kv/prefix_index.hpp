// PrefixIndex: a radix tree over full KV blocks. Every edge is one block of tokens, keyed by its
// chain hash (block_hash.hpp); a node is the cached block that holds those tokens. Lookups walk
// from the salt's root, comparing tokens so a hash collision can never return wrong KV. Partial
// blocks are never inserted. Only leaves may be removed, so a chain never loses a middle block
// (LMCache issue 443 is what happens otherwise).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/core/types.hpp"

namespace chunkwise::kv {

class PrefixIndex {
 public:
  struct Node {
    std::uint64_t hash = 0;
    std::uint64_t parent = 0;  // chain hash of the parent block, or the root hash at depth 0
    int depth = 0;
    int children = 0;
    std::int64_t hits = 0;
    int priority = 0;
    double last_use_s = 0;  // inserted, hit, or released by its last holder
    bool present = false;
  };
  enum class Insert { kAdded, kDuplicate, kOrphan };

  PrefixIndex(int num_blocks, int block_size)
      : block_size_(block_size),
        nodes_(static_cast<std::size_t>(num_blocks)),
        tokens_(static_cast<std::size_t>(num_blocks) * static_cast<std::size_t>(block_size)) {}

  // The cached block holding `tokens` after the prefix keyed `parent`, if any.
  [[nodiscard]] std::optional<BlockId> find(std::uint64_t hash, std::uint64_t parent,
                                            std::span<const TokenId> tokens) const {
    auto it = by_hash_.find(hash);
    if (it == by_hash_.end()) return std::nullopt;
    const Node& n = nodes_[static_cast<std::size_t>(it->second)];
    if (n.parent != parent || !std::equal(tokens.begin(), tokens.end(), tokens_of(it->second).begin()))
      return std::nullopt;
    return it->second;
  }

  // The block keyed `hash`, without checking tokens (for bookkeeping such as demand).
  [[nodiscard]] std::optional<BlockId> block_of(std::uint64_t hash) const {
    auto it = by_hash_.find(hash);
    if (it == by_hash_.end()) return std::nullopt;
    return it->second;
  }

  // Adds block b under its parent. A key already present is a duplicate (the caller keeps its
  // block private); a missing parent (evicted meanwhile) makes the block an orphan, not inserted.
  Insert insert(BlockId b, std::uint64_t hash, std::uint64_t parent, int depth,
                std::span<const TokenId> tokens) {
    check(static_cast<int>(tokens.size()) == block_size_, ErrorCode::kInvalidArgument,
          "only full blocks enter the prefix index");
    if (by_hash_.contains(hash)) return Insert::kDuplicate;
    std::optional<BlockId> up;
    if (depth > 0) {
      up = block_of(parent);
      if (!up) return Insert::kOrphan;
    }
    Node& n = node(b);
    check(!n.present, ErrorCode::kInvalidArgument, "KV block already in the prefix index");
    n = Node{hash, parent, depth, 0, 0, 0, 0.0, true};
    std::copy(tokens.begin(), tokens.end(), tokens_of_mut(b).begin());
    by_hash_.emplace(hash, b);
    if (up) ++node(*up).children;
    return Insert::kAdded;
  }

  // Removes a leaf and returns its parent block, if it has one.
  std::optional<BlockId> remove(BlockId b) {
    Node& n = node(b);
    check(n.present && n.children == 0, ErrorCode::kInvalidArgument, "only a leaf leaves the prefix index");
    std::optional<BlockId> up;
    if (n.depth > 0) {
      up = block_of(n.parent);
      if (up) --node(*up).children;
    }
    by_hash_.erase(n.hash);
    n.present = false;
    return up;
  }

  [[nodiscard]] bool contains(BlockId b) const { return node(b).present; }
  [[nodiscard]] const Node& node(BlockId b) const { return nodes_.at(static_cast<std::size_t>(b)); }
  [[nodiscard]] Node& node(BlockId b) { return nodes_.at(static_cast<std::size_t>(b)); }
  [[nodiscard]] std::span<const TokenId> tokens_of(BlockId b) const {
    return {tokens_.data() + static_cast<std::size_t>(b) * static_cast<std::size_t>(block_size_),
            static_cast<std::size_t>(block_size_)};
  }
  [[nodiscard]] std::size_t size() const { return by_hash_.size(); }
  [[nodiscard]] int block_size() const { return block_size_; }

 private:
  std::span<TokenId> tokens_of_mut(BlockId b) {
    return {tokens_.data() + static_cast<std::size_t>(b) * static_cast<std::size_t>(block_size_),
            static_cast<std::size_t>(block_size_)};
  }

  int block_size_;
  std::vector<Node> nodes_;      // by block id
  std::vector<TokenId> tokens_;  // [num_blocks, block_size]: tokens of indexed blocks
  std::unordered_map<std::uint64_t, BlockId> by_hash_;
};

}  // namespace chunkwise::kv
