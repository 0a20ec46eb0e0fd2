// PromptLayout and ReusePlan checks, the plan-building helpers and the conversion to the backend's
// SelectiveRecompute.
#include "chunkwise/policy/reuse/reuse_plan.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/reuse/reuse_recompute.hpp"

namespace chunkwise {

namespace {

[[noreturn]] void bad(const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, what);
}

std::string range(std::int32_t begin, std::int32_t end) {
  std::string s(1, '[');  // appended piece by piece: GCC 12 warns (-Wrestrict) on "[" + std::string
  s.append(std::to_string(begin)).append(", ").append(std::to_string(end)).append(")");
  return s;
}

}  // namespace

void PromptLayout::append(SegmentKind kind, std::span<const TokenId> segment_tokens) {
  if (segment_tokens.empty()) return;
  check(tokens.size() + segment_tokens.size() <=
            static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
        ErrorCode::kInvalidArgument, "prompt layout: more than 2^31 - 1 tokens");
  chunk_starts.push_back(size());
  kinds.push_back(kind);
  tokens.insert(tokens.end(), segment_tokens.begin(), segment_tokens.end());
}

PromptSegment PromptLayout::segment(std::size_t i) const {
  PromptSegment s;
  s.kind = i < kinds.size() ? kinds[i] : SegmentKind::kChunk;
  s.begin = chunk_starts[i];
  s.end = i + 1 < chunk_starts.size() ? chunk_starts[i + 1] : size();
  return s;
}

void PromptLayout::validate() const {
  if (tokens.size() > static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()))
    bad("prompt layout: more than 2^31 - 1 tokens");
  if (kinds.size() != chunk_starts.size())
    bad("prompt layout: " + std::to_string(chunk_starts.size()) + " segments but " +
        std::to_string(kinds.size()) + " kinds");
  if (tokens.empty()) {
    if (!chunk_starts.empty()) bad("prompt layout: segments in an empty prompt");
    return;
  }
  if (chunk_starts.empty() || chunk_starts.front() != 0)
    bad("prompt layout: the first segment must start at 0");
  for (std::size_t i = 1; i < chunk_starts.size(); ++i)
    if (chunk_starts[i] <= chunk_starts[i - 1])
      bad("prompt layout: segment starts must ascend strictly (segment " + std::to_string(i) + ")");
  if (chunk_starts.back() >= size()) bad("prompt layout: the last segment starts past the prompt");
  for (const auto k : kinds)
    if (k != SegmentKind::kPrefix && k != SegmentKind::kChunk && k != SegmentKind::kQuestion)
      bad("prompt layout: unknown segment kind");
}

std::int32_t ReusePlan::rows() const {
  std::int32_t n = 0;
  for (const auto& l : load) n = std::max(n, l.end);
  for (const auto& a : always) n = std::max(n, a.end);
  return n;
}

void ReusePlan::validate() const {
  if (check_layer < 0) bad("reuse plan: check_layer must be >= 0");
  if (min_tokens < 0) bad("reuse plan: min_tokens must be >= 0");
  for (std::size_t i = 0; i < gradual.size(); ++i)
    if (!(gradual[i] >= 1.0 && std::isfinite(gradual[i])) || (i > 0 && gradual[i] > gradual[i - 1]))
      bad("reuse plan: gradual multiples must be finite, >= 1 and not increasing");
  std::vector<Rows> ranges;
  for (std::size_t i = 0; i < load.size(); ++i) {
    const auto& l = load[i];
    if (!(l.ratio >= 0.0 && l.ratio <= 1.0))
      bad("reuse plan: loaded span " + std::to_string(i) + " has a ratio outside [0, 1]");
    ranges.push_back({l.begin, l.end});
  }
  ranges.insert(ranges.end(), always.begin(), always.end());
  for (const auto& r : ranges)
    if (r.begin < 0 || r.begin >= r.end)
      bad("reuse plan: range " + range(r.begin, r.end) + " is empty or negative");
  std::sort(ranges.begin(), ranges.end(), [](const Rows& a, const Rows& b) { return a.begin < b.begin; });
  std::int32_t next = 0;
  for (const auto& r : ranges) {
    if (r.begin < next) bad("reuse plan: range " + range(r.begin, r.end) + " overlaps another");
    if (r.begin > next) bad("reuse plan: rows " + range(next, r.begin) + " are neither loaded nor computed");
    next = r.end;
  }
}

std::vector<ReusePlan::LoadSpan> stored_chunks(const PromptLayout& layout, const ChunkStore& store) {
  layout.validate();
  std::vector<ReusePlan::LoadSpan> found;
  for (std::size_t i = 0; i < layout.num_segments(); ++i) {
    const PromptSegment s = layout.segment(i);
    if (s.kind != SegmentKind::kChunk) continue;
    const ChunkKey key = store.key_for(layout.tokens_of(s));
    if (store.contains(key)) found.push_back({s.begin, s.end, key, 0.0});
  }
  return found;
}

ReusePlan make_reuse_plan(const PromptLayout& layout, std::vector<ReusePlan::LoadSpan> load, int check_layer,
                          std::int32_t min_tokens, std::vector<double> gradual) {
  layout.validate();
  ReusePlan p;
  p.check_layer = check_layer;
  p.min_tokens = min_tokens;
  p.gradual = std::move(gradual);
  std::int32_t next = 0;
  for (const auto& l : load) {
    if (l.begin < next || l.begin >= l.end || l.end > layout.size())
      bad("reuse plan: loaded span " + range(l.begin, l.end) + " is empty, out of order or outside the " +
          std::to_string(layout.size()) + "-token prompt");
    if (l.begin > next) p.always.push_back({next, l.begin});
    next = l.end;
  }
  if (next < layout.size()) p.always.push_back({next, layout.size()});
  p.load = std::move(load);
  p.validate();
  return p;
}

SelectiveRecompute to_selective_recompute(const ReusePlan& plan, std::int32_t begin, std::int32_t end) {
  plan.validate();
  if (!(0 <= begin && begin < end && end <= plan.rows()))
    bad("reuse plan: batch rows " + range(begin, end) + " are empty or outside the plan's " +
        std::to_string(plan.rows()) + " rows");
  SelectiveRecompute r;
  r.check_layer = plan.check_layer;
  r.min_tokens = plan.min_tokens;
  r.gradual = plan.gradual;
  for (const auto& l : plan.load) {
    const std::int32_t b = std::max(l.begin, begin), e = std::min(l.end, end);
    if (b < e) r.chunks.push_back({b - begin, e - begin, l.ratio});
  }
  for (const auto& a : plan.always) {
    const std::int32_t b = std::max(a.begin, begin), e = std::min(a.end, end);
    if (b < e) r.always.push_back({b - begin, e - begin});
  }
  return r;
}

}  // namespace chunkwise
