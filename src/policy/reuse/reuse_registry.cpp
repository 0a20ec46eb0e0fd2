// The stock reuse policies by name, for the CLI (--reuse, --recompute-ratio) and the Engine.
#include <optional>
#include <string>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/reuse/adaptive_blend_reuse.hpp"
#include "chunkwise/policy/reuse/any_reuse_policy.hpp"
#include "chunkwise/policy/reuse/blend_reuse.hpp"
#include "chunkwise/policy/reuse/full_reuse.hpp"
#include "chunkwise/policy/reuse/prefix_only_reuse.hpp"

namespace chunkwise {

static_assert(ReusePolicy<PrefixOnlyReuse>);
static_assert(ReusePolicy<FullReuse>);
static_assert(ReusePolicy<BlendReuse>);
static_assert(ReusePolicy<AdaptiveBlendReuse>);
static_assert(ReusePolicy<AnyReusePolicy>);

std::vector<std::string> reuse_policies() {
  return {"prefix", "full", "blend", "blend-gradual", "adaptive-blend"};
}

AnyReusePolicy make_reuse_policy(const std::string& name, std::optional<double> ratio) {
  if (ratio && !(*ratio >= 0.0 && *ratio <= 1.0))
    throw Error(ErrorCode::kInvalidArgument,
                "--recompute-ratio must be in [0, 1], got " + std::to_string(*ratio));
  if (name == "prefix" || name == "full") {
    if (ratio)
      throw Error(ErrorCode::kInvalidArgument,
                  "--recompute-ratio applies to --reuse blend and adaptive-blend, not " + name);
    if (name == "prefix") return AnyReusePolicy(PrefixOnlyReuse{}, name);
    return AnyReusePolicy(FullReuse{}, name);
  }
  if (name == "blend" || name == "blend-gradual") {
    BlendReuse::Params p;
    if (ratio) p.ratio = *ratio;
    // The paper's gradual filtering, in two stages: twice the ratio at the check layer, then the
    // ratio among those at the next layer.
    if (name == "blend-gradual") p.gradual = {2.0};
    return AnyReusePolicy(BlendReuse(p), name);
  }
  if (name == "adaptive-blend") {
    AdaptiveBlendReuse::Params p;
    if (ratio) p.base_ratio = *ratio;
    return AnyReusePolicy(AdaptiveBlendReuse(p), name);
  }
  std::string known;
  for (const auto& n : reuse_policies()) known += (known.empty() ? "" : ", ") + n;
  throw Error(ErrorCode::kInvalidArgument, "unknown reuse policy '" + name + "' (known: " + known + ")");
}

}  // namespace chunkwise
