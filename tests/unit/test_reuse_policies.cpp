// The reuse policies as pure planners over a real ChunkStore (host tier only), without a model: the
// prompt layout, which chunk spans each stock policy loads and with which ratio, the rows computed
// normally, the conversion to the backend's SelectiveRecompute (checked by the backend's own
// validation), bad parameters and the registry.
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/reuse/adaptive_blend_reuse.hpp"
#include "chunkwise/policy/reuse/any_reuse_policy.hpp"
#include "chunkwise/policy/reuse/blend_reuse.hpp"
#include "chunkwise/policy/reuse/full_reuse.hpp"
#include "chunkwise/policy/reuse/prefix_only_reuse.hpp"
#include "chunkwise/policy/reuse/reuse_recompute.hpp"
#include "error_code.hpp"

#if defined(CATCH_VERSION_MAJOR) && CATCH_VERSION_MAJOR >= 3
using Catch::Approx;  // v2 has it at global scope already
#endif

using namespace chunkwise;
using test::error_code;

static_assert(ReusePolicy<PrefixOnlyReuse>);
static_assert(ReusePolicy<FullReuse>);
static_assert(ReusePolicy<BlendReuse>);
static_assert(ReusePolicy<AdaptiveBlendReuse>);
static_assert(ReusePolicy<AnyReusePolicy>);

namespace {

constexpr int kBlock = 16;

std::vector<TokenId> seq(int n, int first) {
  std::vector<TokenId> t(static_cast<std::size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

ChunkStore::Config config() {
  ChunkStore::Config c;
  c.model_id = "test-model@1";
  c.host_capacity_bytes = std::size_t{1} << 20;
  c.clock = [] { return 0.0; };
  c.log = [](std::string_view) {};
  return c;
}

// [system 0..8)[chunk A 8..40)[chunk B 40..72)[chunk C 72..104)[question 104..112); the store holds
// A and C, not B.
struct Fixture {
  ChunkStore store{config()};
  PromptLayout layout;
  std::vector<TokenId> a = seq(32, 1000), b = seq(32, 2000), c = seq(32, 3000);

  Fixture() {
    layout.append(SegmentKind::kPrefix, seq(8, 1));
    layout.append(SegmentKind::kChunk, a);
    layout.append(SegmentKind::kChunk, b);
    layout.append(SegmentKind::kChunk, c);
    layout.append(SegmentKind::kQuestion, seq(8, 50));
    store.put(ChunkKv::zeros(a, 1, 4));
    store.put(ChunkKv::zeros(c, 1, 4));
  }
};

std::vector<std::pair<std::int32_t, std::int32_t>> spans(const std::vector<ReusePlan::LoadSpan>& load) {
  std::vector<std::pair<std::int32_t, std::int32_t>> s;
  for (const auto& l : load) s.emplace_back(l.begin, l.end);
  return s;
}
std::vector<std::pair<std::int32_t, std::int32_t>> spans(const std::vector<ReusePlan::Rows>& rows) {
  std::vector<std::pair<std::int32_t, std::int32_t>> s;
  for (const auto& r : rows) s.emplace_back(r.begin, r.end);
  return s;
}
using Spans = std::vector<std::pair<std::int32_t, std::int32_t>>;

// One prefill sequence at prompt positions [begin, end) (slot == position), last row's logits.
ForwardBatch prefill(const PromptLayout& layout, std::int32_t begin, std::int32_t end) {
  ForwardBatch fb;
  for (std::int32_t p = begin; p < end; ++p) {
    fb.tokens.push_back(layout.tokens[static_cast<std::size_t>(p)]);
    fb.positions.push_back(p);
    fb.slots.push_back(p);
  }
  const int pages = (end + kBlock - 1) / kBlock;
  for (int p = 0; p < pages; ++p) fb.pages.push_back(p);
  fb.query_start = {0, end - begin};
  fb.page_start = {0, pages};
  fb.kv_len = {end};
  fb.logit_rows = {end - begin - 1};
  return fb;
}

// Converts plan for the batch [begin, end), runs the backend's validation on it and checks that
// every row lies in exactly one chunk or always range.
SelectiveRecompute checked_recompute(const ReusePlan& plan, const PromptLayout& layout, std::int32_t begin,
                                     std::int32_t end) {
  SelectiveRecompute r = to_selective_recompute(plan, begin, end);
  ForwardBatch fb = prefill(layout, begin, end);
  fb.recompute = &r;
  const int pages = static_cast<int>(fb.pages.size());
  std::vector<float> logits(16);
  validate(fb, logits.size(), 16, pages, kBlock);
  std::vector<int> covered(static_cast<std::size_t>(end - begin), 0);
  for (const auto& c : r.chunks)
    for (std::int32_t j = c.begin; j < c.end; ++j) ++covered[static_cast<std::size_t>(j)];
  for (const auto& a : r.always)
    for (std::int32_t j = a.begin; j < a.end; ++j) ++covered[static_cast<std::size_t>(j)];
  for (const int n : covered) CHECK(n == 1);
  return r;
}

}  // namespace

TEST_CASE("a prompt layout is segments with kinds, checked", "[reuse]") {
  const Fixture f;
  REQUIRE(f.layout.size() == 112);
  REQUIRE(f.layout.num_segments() == 5);
  CHECK(f.layout.chunk_starts == std::vector<std::int32_t>{0, 8, 40, 72, 104});
  const PromptSegment s = f.layout.segment(3);
  CHECK(s.kind == SegmentKind::kChunk);
  CHECK(s.begin == 72);
  CHECK(s.end == 104);
  CHECK(std::vector<TokenId>(f.layout.tokens_of(s).begin(), f.layout.tokens_of(s).end()) == f.c);
  CHECK(f.layout.segment(4).kind == SegmentKind::kQuestion);
  CHECK(to_string(SegmentKind::kPrefix) == "prefix");
  f.layout.validate();
  PromptLayout{}.validate();  // an empty prompt has no segments

  PromptLayout l = f.layout;
  l.chunk_starts[2] = 8;  // not strictly ascending
  CHECK(error_code([&] { l.validate(); }) == ErrorCode::kInvalidArgument);
  l = f.layout;
  l.chunk_starts[0] = 1;
  CHECK(error_code([&] { l.validate(); }) == ErrorCode::kInvalidArgument);
  l = f.layout;
  l.chunk_starts.back() = 112;  // past the prompt
  CHECK(error_code([&] { l.validate(); }) == ErrorCode::kInvalidArgument);
  l = f.layout;
  l.kinds.pop_back();
  CHECK(error_code([&] { l.validate(); }) == ErrorCode::kInvalidArgument);
  // The layout written before kinds: fine for the prefix-only baseline, rejected by policies that load.
  const PromptLayout old{f.layout.tokens, {0}};
  CHECK(error_code([&] { old.validate(); }) == ErrorCode::kInvalidArgument);
  CHECK(PrefixOnlyReuse{}.plan(old, f.store).always.size() == 1);
  CHECK(error_code([&] { (void)BlendReuse{}.plan(old, f.store); }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("prefix-only reuse loads nothing and computes every row", "[reuse]") {
  const Fixture f;
  const ReusePlan p = PrefixOnlyReuse{}.plan(f.layout, f.store);
  CHECK_FALSE(p.reuses());
  CHECK(p.load.empty());
  CHECK(spans(p.always) == Spans{{0, 112}});
  const SelectiveRecompute r = checked_recompute(p, f.layout, 0, 112);
  CHECK(r.chunks.empty());
  CHECK(PrefixOnlyReuse{}.plan(PromptLayout{}, f.store).always.empty());
}

TEST_CASE("full reuse loads every stored chunk with ratio 0 and computes the rest", "[reuse]") {
  const Fixture f;
  const ReusePlan p = FullReuse{}.plan(f.layout, f.store);
  REQUIRE(p.reuses());
  CHECK(spans(p.load) == Spans{{8, 40}, {72, 104}});
  CHECK(p.load[0].key == f.store.key_for(f.a));
  CHECK(p.load[1].key == f.store.key_for(f.c));
  for (const auto& l : p.load) CHECK(l.ratio == 0.0);
  CHECK(p.min_tokens == 0);
  CHECK(p.check_layer == 0);
  // Prefix, chunk B (not stored) and question are computed normally.
  CHECK(spans(p.always) == Spans{{0, 8}, {40, 72}, {104, 112}});
  const SelectiveRecompute r = checked_recompute(p, f.layout, 0, 112);
  const auto quotas = recompute_quotas(r);
  CHECK(std::accumulate(quotas.begin(), quotas.end(), 0) == 0);
}

TEST_CASE("blend reuse: LMCache defaults, stored chunks only, ratio 1 is a full recompute", "[reuse]") {
  const Fixture f;
  const ReusePlan p = BlendReuse{}.plan(f.layout, f.store);
  CHECK(spans(p.load) == Spans{{8, 40}, {72, 104}});
  for (const auto& l : p.load) CHECK(l.ratio == 0.15);
  CHECK(p.min_tokens == 256);
  CHECK(p.check_layer == 1);
  CHECK(spans(p.always) == Spans{{0, 8}, {40, 72}, {104, 112}});

  SECTION("the whole prompt as one batch") {
    const SelectiveRecompute r = checked_recompute(p, f.layout, 0, 112);
    REQUIRE(r.chunks.size() == 2);
    CHECK(r.chunks[1].begin == 72);
    CHECK(r.chunks[1].ratio == 0.15);
    CHECK(r.min_tokens == 256);
    CHECK(r.check_layer == 1);
  }
  SECTION("the prefix served by the prefix cache: rows start after it") {
    const SelectiveRecompute r = checked_recompute(p, f.layout, 8, 112);
    REQUIRE(r.chunks.size() == 2);
    CHECK(r.chunks[0].begin == 0);
    CHECK(r.chunks[0].end == 32);
    CHECK(r.chunks[1].begin == 64);
    REQUIRE(r.always.size() == 2);
    CHECK(r.always[0].begin == 32);
    CHECK(r.always[1].end == 104);
  }
  SECTION("a batch starting inside a loaded chunk keeps the rest of it") {
    const SelectiveRecompute r = checked_recompute(p, f.layout, 20, 112);
    REQUIRE(r.chunks.size() == 2);
    CHECK(r.chunks[0].begin == 0);
    CHECK(r.chunks[0].end == 20);
  }
  SECTION("ratio 1 recomputes every row") {
    BlendReuse::Params params;
    params.ratio = 1.0;
    const ReusePlan full = BlendReuse(params).plan(f.layout, f.store);
    for (const auto& l : full.load) CHECK(l.ratio == 1.0);
    const SelectiveRecompute r = checked_recompute(full, f.layout, 0, 112);
    CHECK(recompute_quotas(r) == std::vector<std::int32_t>{32, 32});
    const std::vector<float> deviation(112, 0.0f);
    const auto rows = select_recompute_rows(r, deviation);
    std::vector<std::int32_t> all(112);
    std::iota(all.begin(), all.end(), 0);
    CHECK(rows == all);
  }
  SECTION("ratio 0.25 without the min-tokens floor recomputes a quarter of each chunk") {
    const ReusePlan q = BlendReuse(BlendReuse::Params{0.25, 0, 1, {}}).plan(f.layout, f.store);
    CHECK(recompute_quotas(checked_recompute(q, f.layout, 0, 112)) == std::vector<std::int32_t>{8, 8});
  }
}

TEST_CASE("a store without the chunks plans a plain prefill", "[reuse]") {
  const Fixture f;
  const ChunkStore empty(config());
  for (const ReusePlan& p : {FullReuse{}.plan(f.layout, empty), BlendReuse{}.plan(f.layout, empty),
                             AdaptiveBlendReuse{}.plan(f.layout, empty)}) {
    CHECK_FALSE(p.reuses());
    CHECK(spans(p.always) == Spans{{0, 112}});
  }
}

TEST_CASE("adaptive blend reuse: ratio from predicted deviation, same mean, skip when too wrong", "[reuse]") {
  CHECK(AdaptiveBlendReuse::predicted_deviation(0, 32) == 0.0);
  CHECK(AdaptiveBlendReuse::predicted_deviation(32, 32) == Approx(std::log(2.0)));
  // Later and shorter chunks deviate more.
  CHECK(AdaptiveBlendReuse::predicted_deviation(64, 32) > AdaptiveBlendReuse::predicted_deviation(32, 32));
  CHECK(AdaptiveBlendReuse::predicted_deviation(64, 8) > AdaptiveBlendReuse::predicted_deviation(64, 32));
  CHECK(AdaptiveBlendReuse::predicted_deviation(100000, 1) < 1.0);

  const Fixture f;
  AdaptiveBlendReuse::Params params;
  params.min_ratio = 0.0;
  params.max_ratio = 1.0;
  const ReusePlan p = AdaptiveBlendReuse(params).plan(f.layout, f.store);
  CHECK(spans(p.load) == Spans{{8, 40}, {72, 104}});
  CHECK(spans(p.always) == Spans{{0, 8}, {40, 72}, {104, 112}});
  CHECK(p.min_tokens == 256);
  CHECK(p.check_layer == 1);
  const double da = AdaptiveBlendReuse::predicted_deviation(8, 32);
  const double dc = AdaptiveBlendReuse::predicted_deviation(72, 32);
  CHECK(p.load[0].ratio == Approx(0.15 * da / ((da + dc) / 2)));
  CHECK(p.load[1].ratio == Approx(0.15 * dc / ((da + dc) / 2)));
  CHECK(p.load[0].ratio < p.load[1].ratio);
  CHECK((p.load[0].ratio + p.load[1].ratio) / 2 == Approx(0.15));  // BlendReuse's budget
  checked_recompute(p, f.layout, 0, 112);

  SECTION("bounds clamp the ratios") {
    params.min_ratio = 0.14;
    params.max_ratio = 0.155;
    const ReusePlan b = AdaptiveBlendReuse(params).plan(f.layout, f.store);
    CHECK(b.load[0].ratio == 0.14);
    CHECK(b.load[1].ratio == 0.155);
  }
  SECTION("a chunk predicted to deviate above the threshold is computed normally") {
    params.skip_deviation = (da + dc) / 2;
    const ReusePlan s = AdaptiveBlendReuse(params).plan(f.layout, f.store);
    CHECK(spans(s.load) == Spans{{8, 40}});
    CHECK(s.load[0].ratio == Approx(0.15));  // alone, it is the mean
    CHECK(spans(s.always) == Spans{{0, 8}, {40, 112}});
    checked_recompute(s, f.layout, 0, 112);
  }
  SECTION("base ratio 1 recomputes every row") {
    params.base_ratio = 1.0;
    params.max_ratio = 0.5;
    const ReusePlan full = AdaptiveBlendReuse(params).plan(f.layout, f.store);
    for (const auto& l : full.load) CHECK(l.ratio == 1.0);
    CHECK(recompute_quotas(checked_recompute(full, f.layout, 0, 112)) == std::vector<std::int32_t>{32, 32});
  }
  SECTION("a first chunk with nothing before it is predicted exact: min_ratio") {
    PromptLayout l;
    l.append(SegmentKind::kChunk, f.a);
    l.append(SegmentKind::kQuestion, seq(4, 7));
    params.min_ratio = 0.02;
    const ReusePlan m = AdaptiveBlendReuse(params).plan(l, f.store);
    REQUIRE(m.load.size() == 1);
    CHECK(m.load[0].ratio == 0.02);
  }
}

TEST_CASE("bad reuse parameters and plans are typed errors", "[reuse]") {
  auto blend = [](double ratio, std::int32_t min_tokens, int check_layer, std::vector<double> gradual = {}) {
    return error_code([&] { BlendReuse(BlendReuse::Params{ratio, min_tokens, check_layer, gradual}); });
  };
  CHECK(blend(0.15, 256, 1) == std::nullopt);
  CHECK(blend(-0.1, 256, 1) == ErrorCode::kInvalidArgument);
  CHECK(blend(1.5, 256, 1) == ErrorCode::kInvalidArgument);
  CHECK(blend(std::nan(""), 256, 1) == ErrorCode::kInvalidArgument);
  CHECK(blend(0.15, -1, 1) == ErrorCode::kInvalidArgument);
  CHECK(blend(0.15, 256, -1) == ErrorCode::kInvalidArgument);
  CHECK(blend(0.15, 256, 1, {3.0, 2.0, 2.0}) == std::nullopt);
  CHECK(blend(0.15, 256, 1, {0.5}) == ErrorCode::kInvalidArgument);
  CHECK(blend(0.15, 256, 1, {2.0, 3.0}) == ErrorCode::kInvalidArgument);
  CHECK(blend(0.15, 256, 1, {std::nan("")}) == ErrorCode::kInvalidArgument);
  CHECK(blend(0.15, 256, 1, {std::numeric_limits<double>::infinity()}) == ErrorCode::kInvalidArgument);

  auto adaptive = [](auto change) {
    AdaptiveBlendReuse::Params p;
    change(p);
    return error_code([&] { AdaptiveBlendReuse{p}; });
  };
  using P = AdaptiveBlendReuse::Params;
  CHECK(adaptive([](P&) {}) == std::nullopt);
  CHECK(adaptive([](P& p) { p.base_ratio = 1.01; }) == ErrorCode::kInvalidArgument);
  CHECK(adaptive([](P& p) { p.min_ratio = 0.7; }) == ErrorCode::kInvalidArgument);  // above max_ratio
  CHECK(adaptive([](P& p) { p.max_ratio = 2.0; }) == ErrorCode::kInvalidArgument);
  CHECK(adaptive([](P& p) { p.min_ratio = -0.1; }) == ErrorCode::kInvalidArgument);
  CHECK(adaptive([](P& p) { p.skip_deviation = -1.0; }) == ErrorCode::kInvalidArgument);
  CHECK(adaptive([](P& p) { p.min_tokens = -5; }) == ErrorCode::kInvalidArgument);
  CHECK(adaptive([](P& p) { p.check_layer = -1; }) == ErrorCode::kInvalidArgument);

  const Fixture f;
  const ReusePlan p = BlendReuse{}.plan(f.layout, f.store);
  CHECK(error_code([&] { (void)to_selective_recompute(p, 50, 50); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([&] { (void)to_selective_recompute(p, 0, 113); }) == ErrorCode::kInvalidArgument);
  ReusePlan gap = p;
  gap.always.pop_back();
  gap.always.pop_back();  // rows 40..72 neither loaded nor computed
  CHECK(error_code([&] { (void)to_selective_recompute(gap, 0, 72); }) == ErrorCode::kInvalidArgument);
  ReusePlan overlap = p;
  overlap.always.push_back({30, 50});
  CHECK(error_code([&] { overlap.validate(); }) == ErrorCode::kInvalidArgument);
  ReusePlan ratio = p;
  ratio.load[0].ratio = 1.5;
  CHECK(error_code([&] { ratio.validate(); }) == ErrorCode::kInvalidArgument);
  // Loaded spans out of order or outside the prompt.
  std::vector<ReusePlan::LoadSpan> spans_bad = {{72, 104, {}, 0.0}, {8, 40, {}, 0.0}};
  CHECK(error_code([&] { (void)make_reuse_plan(f.layout, spans_bad, 1, 0); }) == ErrorCode::kInvalidArgument);
  spans_bad = {{100, 120, {}, 0.0}};
  CHECK(error_code([&] { (void)make_reuse_plan(f.layout, spans_bad, 1, 0); }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("reuse policies by name", "[reuse]") {
  const Fixture f;
  CHECK(reuse_policies() ==
        std::vector<std::string>{"prefix", "full", "blend", "blend-gradual", "adaptive-blend"});
  for (const auto& name : reuse_policies()) {
    AnyReusePolicy p = make_reuse_policy(name);
    CHECK(p.name() == name);
    checked_recompute(p.plan(f.layout, f.store), f.layout, 0, 112);
  }
  CHECK_FALSE(make_reuse_policy("prefix").plan(f.layout, f.store).reuses());
  CHECK(make_reuse_policy("full").plan(f.layout, f.store).load[0].ratio == 0.0);
  CHECK(make_reuse_policy("blend", 0.3).plan(f.layout, f.store).load[1].ratio == 0.3);
  CHECK(make_reuse_policy("blend").plan(f.layout, f.store).load[1].ratio == 0.15);
  CHECK(make_reuse_policy("blend").plan(f.layout, f.store).gradual.empty());
  const ReusePlan g = make_reuse_policy("blend-gradual", 0.2).plan(f.layout, f.store);
  CHECK(g.load[1].ratio == 0.2);
  CHECK(g.gradual == std::vector<double>{2.0});
  CHECK(to_selective_recompute(g, 0, g.rows()).gradual == std::vector<double>{2.0});
  const ReusePlan a = make_reuse_policy("adaptive-blend", 1.0).plan(f.layout, f.store);
  CHECK(a.load[0].ratio == 1.0);

  CHECK(error_code([] { (void)make_reuse_policy("cacheblend"); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([] { (void)make_reuse_policy(""); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([] { (void)make_reuse_policy("blend", 1.2); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([] { (void)make_reuse_policy("blend", -0.01); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([] { (void)make_reuse_policy("full", 0.15); }) == ErrorCode::kInvalidArgument);
  try {
    (void)make_reuse_policy("cacheblend");
  } catch (const Error& e) {
    const std::string what = e.what();
    CHECK(what.find("cacheblend") != std::string::npos);
    CHECK(what.find("adaptive-blend") != std::string::npos);
  }
}
