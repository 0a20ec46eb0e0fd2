// Least-recently-used eviction of unreferenced cached blocks (vLLM's and SGLang's default).
// Only leaves of the prefix tree are candidates; among blocks last used at the same time the
// deeper one goes first, so a shared prefix outlives the suffixes hanging from it.
#pragma once

#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/eviction/block_info.hpp"

namespace chunkwise {

class LruEviction {
 public:
  // A referenced block is never a candidate; remember when it was last used.
  void on_cached(BlockId b, const BlockInfo& info) {
    erase(b);
    last_use_[b] = Stamp{info.now_s, info.depth};
  }
  void on_hit(BlockId b, const BlockInfo& info) { on_cached(b, info); }
  // The block has no reference left; it becomes a candidate if it is a leaf.
  void on_unreferenced(BlockId b, const BlockInfo& info) {
    erase(b);
    const Stamp s{info.now_s, info.depth};
    last_use_[b] = s;
    if (info.num_children == 0) candidates_.insert({s.time, -s.depth, b});
  }
  void on_removed(BlockId b) {
    erase(b);
    last_use_.erase(b);
  }
  [[nodiscard]] std::optional<BlockId> pick_victim() const {
    if (candidates_.empty()) return std::nullopt;
    return std::get<2>(*candidates_.begin());
  }
  [[nodiscard]] std::size_t num_candidates() const { return candidates_.size(); }

 private:
  struct Stamp {
    double time = 0;
    int depth = 0;
  };
  void erase(BlockId b) {
    auto it = last_use_.find(b);
    if (it != last_use_.end()) candidates_.erase({it->second.time, -it->second.depth, b});
  }

  std::unordered_map<BlockId, Stamp> last_use_;
  std::set<std::tuple<double, int, BlockId>> candidates_;  // (last use, -depth, id)
};

}  // namespace chunkwise
