// A sparse policy chosen at run time (by name, from the command line or a service's config):
// any SparsePolicy behind one virtual call, itself a SparsePolicy.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/sparse/sparse_pattern.hpp"

namespace chunkwise {

class AnySparseAttention {
 public:
  template <SparsePolicy P>
  explicit AnySparseAttention(P policy, std::string name)
      : impl_(std::make_shared<Model<P>>(std::move(policy))), name_(std::move(name)) {}

  [[nodiscard]] int tile() const { return impl_->tile(); }
  [[nodiscard]] int min_kv_len() const { return impl_->min_kv_len(); }
  [[nodiscard]] BlockMask select(const AttentionProbe& probe) { return impl_->select(probe); }
  [[nodiscard]] const std::string& name() const { return name_; }
  // The wrapped policy's pattern (sparse_pattern.hpp), nullopt for a policy without one.
  [[nodiscard]] std::optional<SparsePattern> pattern() const { return impl_->pattern(); }

 private:
  struct Concept {
    virtual ~Concept() = default;
    [[nodiscard]] virtual int tile() const = 0;
    [[nodiscard]] virtual int min_kv_len() const = 0;
    virtual BlockMask select(const AttentionProbe& probe) = 0;
    [[nodiscard]] virtual std::optional<SparsePattern> pattern() const = 0;
  };
  template <class P>
  struct Model final : Concept {
    explicit Model(P p) : policy(std::move(p)) {}
    [[nodiscard]] int tile() const override { return policy.tile(); }
    [[nodiscard]] int min_kv_len() const override { return policy.min_kv_len(); }
    BlockMask select(const AttentionProbe& probe) override { return policy.select(probe); }
    [[nodiscard]] std::optional<SparsePattern> pattern() const override {
      if constexpr (DescribedSparsePolicy<P>) return SparsePattern(policy.pattern());
      return std::nullopt;
    }
    P policy;
  };
  std::shared_ptr<Concept> impl_;
  std::string name_;
};

// Makes a stock policy from a spec "NAME[:key=value,...]", NAME one of dense, streaming,
// vertical-slash, block-topk, flex-prefill. Keys every policy takes: tile (64 | 128), min_kv_len,
// dense_layers (indices joined by '/'). streaming: sink, window. block-topk: top_k.
// vertical-slash: config (a file from `chunkwise tune-sparse`), vertical, slash (the sizes of heads
// the config does not list), last_queries. flex-prefill: gamma, tau, min_budget, max_budget.
// Throws Error(kInvalidArgument) naming an unknown policy, key or a bad value.
AnySparseAttention make_sparse_policy(const std::string& spec);

// The names make_sparse_policy() knows.
std::vector<std::string> sparse_policies();

}  // namespace chunkwise
