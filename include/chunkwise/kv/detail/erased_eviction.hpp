// Any EvictionPolicy behind one virtual call per event, for stores that are not templates (the
// chunk store: reuse policies take it as `const ChunkStore&`, so it cannot carry its eviction
// policy as a template parameter the way KvCache does).
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <utility>

#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/eviction/block_info.hpp"

namespace chunkwise::detail {

class ErasedEviction {
 public:
  template <EvictionPolicy P>
  explicit ErasedEviction(P policy) : impl_(std::make_unique<Model<P>>(std::move(policy))) {}

  void on_cached(BlockId b, const BlockInfo& info) { impl_->on_cached(b, info); }
  void on_hit(BlockId b, const BlockInfo& info) { impl_->on_hit(b, info); }
  void on_evictable(BlockId b, const BlockInfo& info) { impl_->on_evictable(b, info); }
  void on_pinned(BlockId b) { impl_->on_pinned(b); }
  void on_removed(BlockId b) { impl_->on_removed(b); }
  [[nodiscard]] std::optional<BlockId> pick_victim(double now_s) { return impl_->pick_victim(now_s); }
  [[nodiscard]] std::size_t num_candidates() const { return impl_->num_candidates(); }

 private:
  struct Concept {
    virtual ~Concept() = default;
    virtual void on_cached(BlockId b, const BlockInfo& info) = 0;
    virtual void on_hit(BlockId b, const BlockInfo& info) = 0;
    virtual void on_evictable(BlockId b, const BlockInfo& info) = 0;
    virtual void on_pinned(BlockId b) = 0;
    virtual void on_removed(BlockId b) = 0;
    virtual std::optional<BlockId> pick_victim(double now_s) = 0;
    [[nodiscard]] virtual std::size_t num_candidates() const = 0;
  };
  template <class P>
  struct Model final : Concept {
    explicit Model(P p) : policy(std::move(p)) {}
    void on_cached(BlockId b, const BlockInfo& info) override { policy.on_cached(b, info); }
    void on_hit(BlockId b, const BlockInfo& info) override { policy.on_hit(b, info); }
    void on_evictable(BlockId b, const BlockInfo& info) override { policy.on_evictable(b, info); }
    void on_pinned(BlockId b) override { policy.on_pinned(b); }
    void on_removed(BlockId b) override { policy.on_removed(b); }
    std::optional<BlockId> pick_victim(double now_s) override { return policy.pick_victim(now_s); }
    [[nodiscard]] std::size_t num_candidates() const override {
      return static_cast<std::size_t>(policy.num_candidates());
    }
    P policy;
  };
  std::unique_ptr<Concept> impl_;
};

}  // namespace chunkwise::detail
