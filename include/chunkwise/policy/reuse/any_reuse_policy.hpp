// A reuse policy chosen at run time (by name, from the command line or a service's config): any
// ReusePolicy behind one virtual call, itself a ReusePolicy.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/reuse/reuse_plan.hpp"

namespace chunkwise {

class AnyReusePolicy {
 public:
  template <ReusePolicy P>
  explicit AnyReusePolicy(P policy, std::string name)
      : impl_(std::make_shared<Model<P>>(std::move(policy))), name_(std::move(name)) {}

  [[nodiscard]] ReusePlan plan(const PromptLayout& layout, const ChunkStore& store) {
    return impl_->plan(layout, store);
  }
  [[nodiscard]] const std::string& name() const { return name_; }

 private:
  struct Concept {
    virtual ~Concept() = default;
    virtual ReusePlan plan(const PromptLayout& layout, const ChunkStore& store) = 0;
  };
  template <class P>
  struct Model final : Concept {
    explicit Model(P p) : policy(std::move(p)) {}
    ReusePlan plan(const PromptLayout& layout, const ChunkStore& store) override {
      return policy.plan(layout, store);
    }
    P policy;
  };
  std::shared_ptr<Concept> impl_;
  std::string name_;
};

// A stock policy by name, for `--reuse NAME [--recompute-ratio R]`: prefix (PrefixOnlyReuse), full
// (FullReuse), blend (BlendReuse, ratio R, default 0.15), adaptive-blend (AdaptiveBlendReuse, base
// ratio R, default 0.15). Other parameters keep their defaults. Throws Error(kInvalidArgument) for
// an unknown name (listing the known ones), a ratio given to prefix or full, or a ratio outside [0, 1].
AnyReusePolicy make_reuse_policy(const std::string& name, std::optional<double> ratio = std::nullopt);

// The names make_reuse_policy() knows.
std::vector<std::string> reuse_policies();

}  // namespace chunkwise
