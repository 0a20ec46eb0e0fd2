// The stock reuse policies with parameters: BlendReuse (CacheBlend) and AdaptiveBlendReuse (an
// approximation of Cache-Craft).
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/reuse/adaptive_blend_reuse.hpp"
#include "chunkwise/policy/reuse/blend_reuse.hpp"

namespace chunkwise {

namespace {

bool unit(double x) {
  return x >= 0.0 && x <= 1.0;  // false for NaN
}

}  // namespace

BlendReuse::BlendReuse(Params params) : p_(params) {
  check(unit(p_.ratio), ErrorCode::kInvalidArgument, "blend reuse: ratio must be in [0, 1]");
  check(p_.min_tokens >= 0, ErrorCode::kInvalidArgument, "blend reuse: min_tokens must be >= 0");
  check(p_.check_layer >= 0, ErrorCode::kInvalidArgument, "blend reuse: check_layer must be >= 0");
  for (std::size_t i = 0; i < p_.gradual.size(); ++i)
    check(p_.gradual[i] >= 1.0 && std::isfinite(p_.gradual[i]) &&
              (i == 0 || p_.gradual[i] <= p_.gradual[i - 1]),
          ErrorCode::kInvalidArgument,
          "blend reuse: gradual multiples must be finite, >= 1 and not increasing");
}

ReusePlan BlendReuse::plan(const PromptLayout& layout, const ChunkStore& store) const {
  std::vector<ReusePlan::LoadSpan> load = stored_chunks(layout, store);
  for (auto& l : load) l.ratio = p_.ratio;
  return make_reuse_plan(layout, std::move(load), p_.check_layer, p_.min_tokens, p_.gradual);
}

AdaptiveBlendReuse::AdaptiveBlendReuse(Params params) : p_(params) {
  check(unit(p_.base_ratio), ErrorCode::kInvalidArgument,
        "adaptive blend reuse: base_ratio must be in [0, 1]");
  check(unit(p_.min_ratio) && unit(p_.max_ratio) && p_.min_ratio <= p_.max_ratio, ErrorCode::kInvalidArgument,
        "adaptive blend reuse: need 0 <= min_ratio <= max_ratio <= 1");
  check(unit(p_.skip_deviation), ErrorCode::kInvalidArgument,
        "adaptive blend reuse: skip_deviation must be in [0, 1]");
  check(p_.min_tokens >= 0, ErrorCode::kInvalidArgument, "adaptive blend reuse: min_tokens must be >= 0");
  check(p_.check_layer >= 0, ErrorCode::kInvalidArgument, "adaptive blend reuse: check_layer must be >= 0");
}

double AdaptiveBlendReuse::predicted_deviation(std::int32_t preceding, std::int32_t length) {
  if (preceding <= 0 || length <= 0) return 0.0;
  const double p = preceding, l = length;
  return std::min(1.0, p / l * std::log1p(l / p));
}

ReusePlan AdaptiveBlendReuse::plan(const PromptLayout& layout, const ChunkStore& store) const {
  std::vector<ReusePlan::LoadSpan> load;
  std::vector<double> dev;
  double weighted = 0.0, rows = 0.0;
  for (const auto& l : stored_chunks(layout, store)) {
    const double d = predicted_deviation(l.begin, l.end - l.begin);
    if (d > p_.skip_deviation) continue;  // too wrong to reuse: computed normally
    load.push_back(l);
    dev.push_back(d);
    weighted += d * (l.end - l.begin);
    rows += l.end - l.begin;
  }
  const double mean = rows > 0.0 ? weighted / rows : 0.0;
  for (std::size_t i = 0; i < load.size(); ++i) {
    if (p_.base_ratio >= 1.0)
      load[i].ratio = 1.0;
    else if (mean <= 0.0)
      load[i].ratio = p_.min_ratio;
    else
      load[i].ratio = std::clamp(p_.base_ratio * dev[i] / mean, p_.min_ratio, p_.max_ratio);
  }
  return make_reuse_plan(layout, std::move(load), p_.check_layer, p_.min_tokens);
}

}  // namespace chunkwise
