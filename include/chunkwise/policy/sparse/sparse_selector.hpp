// The session's sparse-attention policy as a backend sees it: one virtual call per prefill chunk
// of one sequence in one layer. Backends build the probe, ask for a mask, and run block-sparse
// attention where the mask is not dense. A session with DenseAttention passes no selector at all.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <utility>

#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/sparse_pattern.hpp"

namespace chunkwise {

// What the masks of a run cost and saved (MaskCost summed over every probed chunk and layer).
struct SparseStats {
  std::int64_t selections = 0;       // masks asked for
  std::int64_t dense_fallbacks = 0;  // of which came back dense (short chunk, dense layer, ...)
  double computed_tiles = 0;
  double causal_tiles = 0;
  double select_s = 0;  // time spent in select() (mask building)
  [[nodiscard]] double density() const { return causal_tiles > 0 ? computed_tiles / causal_tiles : 1.0; }
};

class SparseSelector {
 public:
  virtual ~SparseSelector() = default;
  // The tile size of every mask select() returns (64 or 128).
  [[nodiscard]] virtual int tile() const = 0;
  // Chunks whose kv_len is below this are attended densely without a probe.
  [[nodiscard]] virtual int min_kv_len() const = 0;
  // A mask for the chunk, valid for probe (validate(mask, probe) holds).
  virtual BlockMask select(const AttentionProbe& probe) = 0;
  // The policy as data, when it is a stock one: a backend may then build the same masks on its
  // device (and report them through record()) instead of building a host probe and calling select().
  [[nodiscard]] virtual const SparsePattern* pattern() const { return nullptr; }
  // Counts a mask a backend built itself from pattern().
  virtual void record(const BlockMask& /*mask*/, double /*seconds*/) {}
};

// Any SparsePolicy behind the selector interface, with its cost counted in stats().
template <SparsePolicy P>
class PolicySelector final : public SparseSelector {
 public:
  explicit PolicySelector(P policy) : policy_(std::move(policy)) {
    if constexpr (DescribedSparsePolicy<P>) {
      pattern_ = SparsePattern(policy_.pattern());
    } else if constexpr (requires(const P& p) { p.pattern(); }) {  // a runtime policy that may have one
      pattern_ = policy_.pattern();
    }
  }
  [[nodiscard]] const SparsePattern* pattern() const override { return pattern_ ? &*pattern_ : nullptr; }
  void record(const BlockMask& mask, double seconds) override {
    stats_.select_s += seconds;
    count(mask);
  }
  [[nodiscard]] int tile() const override { return policy_.tile(); }
  [[nodiscard]] int min_kv_len() const override { return policy_.min_kv_len(); }
  BlockMask select(const AttentionProbe& probe) override {
    const auto t0 = std::chrono::steady_clock::now();
    BlockMask mask = policy_.select(probe);
    stats_.select_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    validate(mask, probe);
    count(mask);
    return mask;
  }
  [[nodiscard]] const SparseStats& stats() const { return stats_; }
  [[nodiscard]] const P& policy() const { return policy_; }

 private:
  void count(const BlockMask& mask) {
    const MaskCost cost = mask_cost(mask);
    stats_.selections++;
    if (mask.dense) stats_.dense_fallbacks++;
    stats_.computed_tiles += cost.computed_tiles;
    stats_.causal_tiles += cost.causal_tiles;
  }
  P policy_;
  SparseStats stats_;
  std::optional<SparsePattern> pattern_;
};

}  // namespace chunkwise
