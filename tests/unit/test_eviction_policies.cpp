// The four stock eviction policies, driven by hand-made events and an injected clock (no model,
// no KV cache): every time is an explicit now_s.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/eviction/cost_aware_eviction.hpp"
#include "chunkwise/policy/eviction/lru_eviction.hpp"
#include "chunkwise/policy/eviction/prefix_lifetime_eviction.hpp"
#include "chunkwise/policy/eviction/priority_eviction.hpp"
#include "error_code.hpp"

#if defined(CATCH_VERSION_MAJOR) && CATCH_VERSION_MAJOR >= 3
using Catch::Approx;  // v2 has it at global scope already
#endif

using namespace chunkwise;

static_assert(EvictionPolicy<LruEviction>);
static_assert(EvictionPolicy<PrefixLifetimeEviction>);
static_assert(EvictionPolicy<CostAwareEviction>);
static_assert(EvictionPolicy<PriorityEviction>);

namespace {

constexpr BlockId kNone = -1;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The session's clock, faked: tests move it by hand and it stamps every event it reports.
struct FakeClock {
  double now = 0;
  void advance(double dt) { now += dt; }
  [[nodiscard]] BlockInfo stamp(BlockInfo info) const {
    info.now_s = now;
    info.last_use_s = now;
    return info;
  }
};

// The victim as a plain id (kNone for none) so that failures print readably.
template <class P>
BlockId victim(P& p, double now_s) {
  return p.pick_victim(now_s).value_or(kNone);
}

// Evicts until nothing is left, as the KV cache would; returns the order.
template <class P>
std::vector<BlockId> drain(P& p, double now_s) {
  std::vector<BlockId> order;
  while (auto b = p.pick_victim(now_s)) {
    order.push_back(*b);
    p.on_removed(*b);
    if (order.size() > 10000) break;  // a policy that never empties must not hang the test
  }
  CHECK(p.num_candidates() == 0);
  return order;
}

}  // namespace

// ---- All four policies ---------------------------------------------------------------------------

TEMPLATE_TEST_CASE("an eviction policy with no candidates has no victim", "[eviction]", LruEviction,
                   PrefixLifetimeEviction, CostAwareEviction, PriorityEviction) {
  TestType p;
  CHECK(p.num_candidates() == 0);
  CHECK_FALSE(p.pick_victim(0.0).has_value());
  CHECK_FALSE(p.pick_victim(1e9).has_value());

  // Cached and hit blocks are referenced, so they are not candidates.
  FakeClock clock;
  p.on_cached(1, clock.stamp({.depth = 0, .tokens = 16, .priority = 3, .bytes = 1024}));
  clock.advance(1);
  p.on_hit(1, clock.stamp({.depth = 0, .tokens = 16, .priority = 3, .bytes = 1024}));
  CHECK(p.num_candidates() == 0);
  CHECK_FALSE(p.pick_victim(clock.now).has_value());

  // Forgetting blocks it never saw is harmless.
  p.on_pinned(7);
  p.on_removed(7);
  CHECK(p.num_candidates() == 0);
  CHECK_FALSE(p.pick_victim(clock.now).has_value());
}

TEMPLATE_TEST_CASE("every eviction policy tracks its candidate set", "[eviction]", LruEviction,
                   PrefixLifetimeEviction, CostAwareEviction, PriorityEviction) {
  TestType p;
  FakeClock clock;
  const BlockInfo info{.depth = 1, .tokens = 16, .tokens_before = 16, .priority = 1, .bytes = 4096};
  for (BlockId b = 0; b < 5; ++b) {
    p.on_cached(b, clock.stamp(info));
    p.on_evictable(b, clock.stamp(info));
    clock.advance(1);
  }
  CHECK(p.num_candidates() == 5);
  p.on_evictable(2, clock.stamp(info));  // a re-report is not a new candidate
  CHECK(p.num_candidates() == 5);

  // pick_victim only names the victim; the cache evicts it with on_removed.
  const BlockId v = victim(p, clock.now);
  REQUIRE(v != kNone);
  CHECK(victim(p, clock.now) == v);
  CHECK(p.num_candidates() == 5);

  p.on_pinned(v);
  CHECK(p.num_candidates() == 4);
  CHECK(victim(p, clock.now) != v);
  p.on_pinned(v);  // pinning twice is harmless
  CHECK(p.num_candidates() == 4);

  const BlockId w = victim(p, clock.now);
  p.on_removed(w);
  CHECK(p.num_candidates() == 3);
  CHECK(victim(p, clock.now) != w);

  // Far in the future (every retention over) the three that are left still come out, once each.
  std::vector<BlockId> rest = drain(p, clock.now + 1e6);
  std::sort(rest.begin(), rest.end());
  std::vector<BlockId> expected;
  for (BlockId b = 0; b < 5; ++b) {
    if (b != v && b != w) expected.push_back(b);
  }
  CHECK(rest == expected);
}

// ---- LruEviction ---------------------------------------------------------------------------------

TEST_CASE("LRU evicts the block released longest ago first", "[eviction]") {
  LruEviction lru;
  // Reported out of time order: the rank is the release time, not the order of the reports.
  lru.on_evictable(30, {.now_s = 3.0, .last_use_s = 3.0, .depth = 0});
  lru.on_evictable(10, {.now_s = 1.0, .last_use_s = 1.0, .depth = 0});
  lru.on_evictable(20, {.now_s = 2.0, .last_use_s = 2.0, .depth = 0});
  CHECK(lru.num_candidates() == 3);
  CHECK(drain(lru, 10.0) == std::vector<BlockId>{10, 20, 30});
}

TEST_CASE("LRU evicts the deeper block first among blocks released together", "[eviction]") {
  LruEviction lru;
  FakeClock clock{5.0};
  // Ids rise against depth, so a tie broken by id would give the wrong order.
  lru.on_evictable(1, clock.stamp({.depth = 3}));
  lru.on_evictable(2, clock.stamp({.depth = 0}));
  lru.on_evictable(3, clock.stamp({.depth = 1}));
  lru.on_evictable(4, clock.stamp({.depth = 2}));
  clock.advance(1);
  lru.on_evictable(0, clock.stamp({.depth = 9}));  // deepest, but released later
  CHECK(drain(lru, clock.now) == std::vector<BlockId>{1, 4, 3, 2, 0});
}

TEST_CASE("LRU ranks only by release time, not by hits", "[eviction]") {
  LruEviction lru;
  FakeClock clock;
  lru.on_cached(1, clock.stamp({}));
  for (int i = 0; i < 10; ++i) lru.on_hit(1, clock.stamp({.hits = i + 1}));
  lru.on_evictable(1, clock.stamp({.hits = 10}));
  clock.advance(1);
  lru.on_cached(2, clock.stamp({}));
  lru.on_evictable(2, clock.stamp({}));
  CHECK(victim(lru, clock.now) == 1);
}

TEST_CASE("LRU forgets pinned and removed blocks and re-ranks re-reported ones", "[eviction]") {
  LruEviction lru;
  FakeClock clock;
  for (BlockId b = 1; b <= 4; ++b) {
    lru.on_evictable(b, clock.stamp({}));
    clock.advance(1);
  }
  REQUIRE(lru.num_candidates() == 4);
  CHECK(victim(lru, clock.now) == 1);

  lru.on_pinned(1);  // referenced again
  CHECK(lru.num_candidates() == 3);
  CHECK(victim(lru, clock.now) == 2);

  lru.on_removed(2);
  CHECK(lru.num_candidates() == 2);
  CHECK(victim(lru, clock.now) == 3);

  lru.on_evictable(3, clock.stamp({}));  // released again, now the most recent
  CHECK(lru.num_candidates() == 2);
  CHECK(victim(lru, clock.now) == 4);

  clock.advance(1);
  lru.on_evictable(1, clock.stamp({}));  // the pinned one comes back, newest of all
  CHECK(lru.num_candidates() == 3);
  CHECK(drain(lru, clock.now) == std::vector<BlockId>{4, 3, 1});
}

TEST_CASE("LRU agrees with a brute-force reference under random traffic", "[eviction]") {
  LruEviction lru;
  std::map<BlockId, std::pair<double, int>> ref;  // candidate -> (release time, depth)
  std::mt19937 rng(20240917);
  std::uniform_int_distribution<int> op_dist(0, 99);
  std::uniform_int_distribution<BlockId> id_dist(0, 199);
  std::uniform_int_distribution<int> time_dist(0, 40);  // coarse, so ties are common
  std::uniform_int_distribution<int> depth_dist(0, 7);
  int mismatches = 0;
  for (int step = 0; step < 20000; ++step) {
    const int op = op_dist(rng);
    const BlockId b = id_dist(rng);
    if (op < 55) {
      const double t = time_dist(rng);
      const int depth = depth_dist(rng);
      lru.on_evictable(b, {.now_s = t, .last_use_s = t, .depth = depth});
      ref[b] = {t, depth};
    } else if (op < 80) {
      lru.on_pinned(b);
      ref.erase(b);
    } else {
      lru.on_removed(b);
      ref.erase(b);
    }
    if (lru.num_candidates() != ref.size()) ++mismatches;
    const std::optional<BlockId> got = lru.pick_victim(step);
    if (ref.empty()) {
      if (got.has_value()) ++mismatches;
      continue;
    }
    // Compare keys, not ids: which of two equal keys goes first is not specified.
    auto key = [](const std::pair<double, int>& v) { return std::make_pair(v.first, -v.second); };
    const auto best = std::min_element(
        ref.begin(), ref.end(), [&](const auto& x, const auto& y) { return key(x.second) < key(y.second); });
    if (!got.has_value() || !ref.contains(*got) || key(ref.at(*got)) != key(best->second)) ++mismatches;
  }
  CHECK(mismatches == 0);
  CHECK(lru.num_candidates() == ref.size());
}

// ---- PrefixLifetimeEviction ----------------------------------------------------------------------

TEST_CASE("prefix lifetime evicts blocks nobody waits for before any wanted block", "[eviction]") {
  PrefixLifetimeEviction p;
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.depth = 0, .demand = 2}));  // oldest, but still wanted
  clock.advance(1);
  p.on_evictable(2, clock.stamp({.depth = 0, .demand = 1}));
  clock.advance(1);
  p.on_evictable(3, clock.stamp({.depth = 0, .demand = 0}));
  clock.advance(1);
  p.on_evictable(4, clock.stamp({.depth = 0, .demand = 0}));
  CHECK(victim(p, clock.now) == 3);
  // Unwanted blocks in LRU order, then wanted ones, the least wanted first.
  CHECK(drain(p, clock.now) == std::vector<BlockId>{3, 4, 2, 1});
}

TEST_CASE("prefix lifetime orders unwanted blocks by LRU, deeper first at equal time", "[eviction]") {
  PrefixLifetimeEviction p;
  FakeClock clock{10};
  p.on_evictable(1, clock.stamp({.depth = 0}));
  p.on_evictable(2, clock.stamp({.depth = 1}));
  clock.advance(5);
  p.on_evictable(3, clock.stamp({.depth = 5}));
  clock.advance(5);
  p.on_evictable(0, clock.stamp({.depth = 2}));
  CHECK(drain(p, clock.now) == std::vector<BlockId>{2, 1, 3, 0});
}

TEST_CASE("prefix lifetime evicts the least wanted first among wanted blocks", "[eviction]") {
  PrefixLifetimeEviction p;
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.demand = 3}));
  clock.advance(1);
  p.on_evictable(2, clock.stamp({.demand = 2}));
  clock.advance(1);
  p.on_evictable(3, clock.stamp({.demand = 1}));  // newest, least wanted
  clock.advance(1);
  p.on_evictable(4, clock.stamp({.demand = 2}));  // same demand as 2, newer
  CHECK(drain(p, clock.now) == std::vector<BlockId>{3, 2, 4, 1});
}

TEST_CASE("prefix lifetime re-ranks a block whose demand changes", "[eviction]") {
  PrefixLifetimeEviction p;
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.demand = 2}));
  clock.advance(1);
  p.on_evictable(2, clock.stamp({.demand = 1}));
  clock.advance(1);
  p.on_evictable(3, clock.stamp({.demand = 3}));
  REQUIRE(victim(p, clock.now) == 2);

  clock.advance(1);
  p.on_evictable(1, clock.stamp({.demand = 0}));  // its group is done: goes first
  CHECK(p.num_candidates() == 3);
  CHECK(victim(p, clock.now) == 1);

  clock.advance(1);
  p.on_evictable(4, clock.stamp({.demand = 0}));  // done later than block 1
  CHECK(victim(p, clock.now) == 1);

  clock.advance(1);
  p.on_evictable(1, clock.stamp({.demand = 5}));  // wanted again by newly queued requests
  CHECK(victim(p, clock.now) == 4);
  CHECK(drain(p, clock.now) == std::vector<BlockId>{4, 2, 3, 1});
}

TEST_CASE("prefix lifetime forgets pinned and removed blocks", "[eviction]") {
  PrefixLifetimeEviction p;
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.demand = 0}));
  p.on_evictable(2, clock.stamp({.demand = 0}));
  p.on_evictable(3, clock.stamp({.demand = 1}));
  p.on_pinned(1);
  CHECK(p.num_candidates() == 2);
  CHECK(victim(p, clock.now) == 2);
  p.on_removed(2);
  CHECK(p.num_candidates() == 1);
  CHECK(victim(p, clock.now) == 3);
}

// ---- CostAwareEviction ---------------------------------------------------------------------------

namespace {
// One block of a chain of 16-token blocks, 1 KiB each.
BlockInfo chain_block(int depth) {
  return {.depth = depth, .tokens = 16, .tokens_before = 16 * depth, .bytes = 1024};
}
}  // namespace

TEST_CASE("cost-aware eviction keeps a block hit often recently over one used once", "[eviction]") {
  CostAwareEviction p;
  FakeClock clock;
  const BlockInfo info = chain_block(2);
  p.on_cached(1, clock.stamp(info));
  for (int i = 0; i < 3; ++i) {
    clock.advance(1);
    p.on_hit(1, clock.stamp(info));
  }
  p.on_cached(2, clock.stamp(info));  // same size and place, cached at the time of 1's last hit
  p.on_evictable(2, clock.stamp(info));
  p.on_evictable(1, clock.stamp(info));
  CHECK(victim(p, clock.now) == 2);
  CHECK(p.frequency(1, clock.now) > 3.9);
  CHECK(p.frequency(2, clock.now) == Approx(1.0));
}

TEST_CASE("cost-aware eviction lets old hits decay", "[eviction]") {
  CostAwareEviction p(/*half_life_s=*/10.0);
  FakeClock clock;
  const BlockInfo info = chain_block(1);
  // Block 1: four uses 100 s (ten half-lives) ago.
  p.on_cached(1, clock.stamp(info));
  for (int i = 0; i < 3; ++i) p.on_hit(1, clock.stamp(info));
  p.on_evictable(1, clock.stamp(info));
  // Block 3: four uses 5 s before block 2's single use.
  clock.advance(95);
  p.on_cached(3, clock.stamp(info));
  for (int i = 0; i < 3; ++i) p.on_hit(3, clock.stamp(info));
  p.on_evictable(3, clock.stamp(info));
  // Block 2: one use now.
  clock.advance(5);
  p.on_cached(2, clock.stamp(info));
  p.on_evictable(2, clock.stamp(info));

  CHECK(p.frequency(1, clock.now) == Approx(4.0 / 1024));
  CHECK(p.frequency(3, clock.now) == Approx(4.0 / std::sqrt(2.0)));
  CHECK(p.frequency(2, clock.now) == Approx(1.0));
  // 4/1024 < 1 < 4/sqrt(2): the stale block goes, then the single use, and the recent hits stay.
  CHECK(drain(p, clock.now) == std::vector<BlockId>{1, 2, 3});
}

TEST_CASE("cost-aware eviction keeps deeper blocks, which cost more to recompute", "[eviction]") {
  CostAwareEviction p;
  FakeClock clock;
  // Deeper ids are cached first, so neither LRU order nor the deeper-first tie-break explains
  // the result: only the recompute cost does.
  for (int depth = 4; depth >= 0; --depth) {
    const BlockId b = static_cast<BlockId>(depth);
    p.on_cached(b, clock.stamp(chain_block(depth)));
  }
  for (int depth = 4; depth >= 0; --depth) {
    const BlockId b = static_cast<BlockId>(depth);
    p.on_evictable(b, clock.stamp(chain_block(depth)));
  }
  CHECK(drain(p, clock.now) == std::vector<BlockId>{0, 1, 2, 3, 4});
}

TEST_CASE("cost-aware value is frequency times recompute cost per byte", "[eviction]") {
  FakeClock clock;
  BlockInfo big = chain_block(0);
  const BlockInfo small = chain_block(0);
  auto race = [&](int uses_of_big, std::size_t bytes_of_big) {
    CostAwareEviction p;
    big.bytes = bytes_of_big;
    p.on_cached(1, clock.stamp(big));
    for (int i = 1; i < uses_of_big; ++i) p.on_hit(1, clock.stamp(big));
    p.on_evictable(1, clock.stamp(big));
    p.on_cached(2, clock.stamp(small));
    p.on_evictable(2, clock.stamp(small));
    return victim(p, clock.now);
  };
  CHECK(race(1, 2048) == 1);  // same use, twice the bytes
  CHECK(race(3, 2048) == 2);  // 3 uses / 2 KiB beats 1 use / 1 KiB
  CHECK(race(3, 4096) == 1);  // 3 uses / 4 KiB does not
}

TEST_CASE("cost-aware frequency halves every half-life", "[eviction]") {
  CostAwareEviction p(/*half_life_s=*/10.0);
  CHECK(p.frequency(1, 0.0) == 0.0);  // unknown block
  p.on_cached(1, {.now_s = 0.0, .last_use_s = 0.0, .tokens = 16});
  CHECK(p.frequency(1, 0.0) == Approx(1.0));
  CHECK(p.frequency(1, 10.0) == Approx(0.5));
  CHECK(p.frequency(1, 20.0) == Approx(0.25));
  CHECK(p.frequency(1, 5.0) == Approx(1.0 / std::sqrt(2.0)));
  p.on_hit(1, {.now_s = 0.0, .last_use_s = 0.0, .tokens = 16});
  CHECK(p.frequency(1, 0.0) == Approx(2.0));
  p.on_hit(1, {.now_s = 10.0, .last_use_s = 10.0, .tokens = 16});  // 2 * 1/2 + 1
  CHECK(p.frequency(1, 10.0) == Approx(2.0));
  CHECK(p.frequency(1, 20.0) == Approx(1.0));
  CHECK(p.frequency(1, 30.0) == Approx(0.5));

  // Removal forgets the history: cached again, it starts from one use.
  p.on_removed(1);
  CHECK(p.frequency(1, 10.0) == 0.0);
  p.on_cached(1, {.now_s = 40.0, .last_use_s = 40.0, .tokens = 16});
  CHECK(p.frequency(1, 40.0) == Approx(1.0));
}

TEST_CASE("cost-aware ranks a block when it is reported evictable", "[eviction]") {
  CostAwareEviction p;
  FakeClock clock;
  const BlockInfo info = chain_block(1);
  p.on_cached(1, clock.stamp(info));
  p.on_cached(2, clock.stamp(info));
  p.on_hit(2, clock.stamp(info));
  p.on_evictable(1, clock.stamp(info));
  p.on_evictable(2, clock.stamp(info));
  REQUIRE(victim(p, clock.now) == 1);
  // Block 1 is looked up again: pinned, hit three times, released.
  p.on_pinned(1);
  CHECK(victim(p, clock.now) == 2);
  for (int i = 0; i < 3; ++i) p.on_hit(1, clock.stamp(info));
  p.on_evictable(1, clock.stamp(info));
  CHECK(victim(p, clock.now) == 2);
}

TEST_CASE("cost-aware counts a block reported without on_cached as one use then", "[eviction]") {
  CostAwareEviction p(/*half_life_s=*/10.0);
  FakeClock clock;
  const BlockInfo info = chain_block(1);
  p.on_cached(1, clock.stamp(info));  // two uses at t=0: one by t=10, 1/2 by t=20
  p.on_hit(1, clock.stamp(info));
  p.on_evictable(1, clock.stamp(info));
  clock.advance(20);
  p.on_evictable(2, clock.stamp(info));  // never cached: one use at t=20, not at t=0
  p.on_cached(3, clock.stamp(info));     // two uses at t=20
  p.on_hit(3, clock.stamp(info));
  p.on_evictable(3, clock.stamp(info));
  CHECK(drain(p, clock.now) == std::vector<BlockId>{1, 2, 3});
}

TEST_CASE("cost-aware ranks stay right at large clock values", "[eviction]") {
  // Ranks are kept relative to time 0; a clock at a Unix epoch must not wash them out.
  CostAwareEviction p(/*half_life_s=*/1.0);
  FakeClock clock{1.7e9};
  const BlockInfo info = chain_block(1);
  p.on_cached(1, clock.stamp(info));
  p.on_hit(1, clock.stamp(info));
  p.on_evictable(1, clock.stamp(info));  // two uses
  clock.advance(0.5);
  p.on_cached(2, clock.stamp(info));
  p.on_evictable(2, clock.stamp(info));  // one use, half a half-life later: 1 < 2/sqrt(2)
  clock.advance(0.25);
  p.on_cached(3, clock.stamp(info));
  p.on_hit(3, clock.stamp(info));
  p.on_evictable(3, clock.stamp(info));  // two uses, latest
  CHECK(drain(p, clock.now) == std::vector<BlockId>{2, 1, 3});
}

TEST_CASE("cost-aware eviction rejects bad parameters", "[eviction]") {
  for (const double h : {0.0, -1.0, -kInf, kNaN, kInf}) {
    CAPTURE(h);
    CHECK(chunkwise::test::error_code([&] { CostAwareEviction p(h); }) == ErrorCode::kInvalidArgument);
  }
  for (const double a : {0.0, -4096.0, kNaN, kInf}) {
    CAPTURE(a);
    CHECK(chunkwise::test::error_code([&] { CostAwareEviction p(60.0, a); }) == ErrorCode::kInvalidArgument);
  }
  CHECK_FALSE(chunkwise::test::error_code([] { CostAwareEviction p(1e-3, 1.0); }).has_value());
}

// ---- PriorityEviction ----------------------------------------------------------------------------

TEST_CASE("priority eviction evicts the lowest priority first", "[eviction]") {
  PriorityEviction p(/*retention_s=*/60.0);
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.priority = 3}));  // oldest
  clock.advance(2);
  p.on_evictable(2, clock.stamp({.priority = 1}));
  clock.advance(3);
  p.on_evictable(3, clock.stamp({.priority = 0}));
  clock.advance(1);
  p.on_evictable(4, clock.stamp({.priority = -2}));  // newest, lowest
  CHECK(drain(p, clock.now) == std::vector<BlockId>{4, 3, 2, 1});
}

TEST_CASE("priority eviction keeps a priority only for the retention time", "[eviction]") {
  PriorityEviction p(/*retention_s=*/60.0);
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.priority = 5}));  // retained until t=60
  clock.advance(10);
  p.on_evictable(2, clock.stamp({.priority = 0}));
  clock.advance(10);
  p.on_evictable(3, clock.stamp({.priority = 5}));  // retained until t=80

  CHECK(victim(p, 30.0) == 2);
  CHECK(victim(p, 59.0) == 2);
  // Past t=60 block 1 is a default block released at t=0, older than block 2.
  CHECK(victim(p, 61.0) == 1);
  CHECK(p.num_candidates() == 3);
  p.on_removed(1);
  CHECK(victim(p, 61.0) == 2);  // block 3 still retained
  p.on_removed(2);
  CHECK(victim(p, 61.0) == 3);
}

TEST_CASE("expired priorities fall back to LRU among default blocks", "[eviction]") {
  PriorityEviction p(/*retention_s=*/30.0);
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.priority = 9}));
  clock.advance(10);
  p.on_evictable(2, clock.stamp({.priority = 0}));
  clock.advance(10);
  p.on_evictable(3, clock.stamp({.priority = 4}));
  clock.advance(10);
  p.on_evictable(4, clock.stamp({.priority = 0}));
  // At t=100 every retention is over: plain release order.
  CHECK(drain(p, 100.0) == std::vector<BlockId>{1, 2, 3, 4});
}

TEST_CASE("priority eviction falls back to a non-zero default priority", "[eviction]") {
  PriorityEviction p(/*retention_s=*/60.0, /*default_priority=*/2);
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.priority = 2}));
  clock.advance(10);
  p.on_evictable(2, clock.stamp({.priority = 1}));  // below the default: goes first while retained
  clock.advance(10);
  p.on_evictable(3, clock.stamp({.priority = 3}));
  CHECK(victim(p, 20.0) == 2);
  // Past t=70 block 2 is back at the default, and block 1 (older) goes before it.
  CHECK(drain(p, 100.0) == std::vector<BlockId>{1, 2, 3});
}

TEST_CASE("priority eviction with infinite retention keeps priorities forever", "[eviction]") {
  PriorityEviction p(/*retention_s=*/kInf);
  p.on_evictable(1, {.now_s = 0.0, .last_use_s = 0.0, .priority = 5});
  p.on_evictable(2, {.now_s = 1e6, .last_use_s = 1e6, .priority = 0});
  CHECK(victim(p, 1e9) == 2);
  CHECK(victim(p, 1e300) == 2);
  CHECK(drain(p, 1e300) == std::vector<BlockId>{2, 1});
}

TEST_CASE("priority eviction with zero retention is plain LRU", "[eviction]") {
  PriorityEviction p(/*retention_s=*/0.0);
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.priority = 5}));
  clock.advance(1);
  p.on_evictable(2, clock.stamp({.priority = -5}));
  clock.advance(1);
  p.on_evictable(3, clock.stamp({.depth = 0, .priority = 0}));
  p.on_evictable(4, clock.stamp({.depth = 1, .priority = 0}));
  CHECK(drain(p, clock.now) == std::vector<BlockId>{1, 2, 4, 3});
}

TEST_CASE("priority eviction breaks ties by depth", "[eviction]") {
  PriorityEviction p;
  FakeClock clock;
  p.on_evictable(1, clock.stamp({.depth = 1, .priority = 2}));
  p.on_evictable(2, clock.stamp({.depth = 3, .priority = 2}));
  p.on_evictable(3, clock.stamp({.depth = 0, .priority = 1}));
  CHECK(drain(p, clock.now) == std::vector<BlockId>{3, 2, 1});
}

TEST_CASE("priority eviction leaves no stale retention behind", "[eviction]") {
  PriorityEviction p(/*retention_s=*/60.0);
  FakeClock clock;

  SECTION("pinned, then released again") {
    p.on_evictable(1, clock.stamp({.priority = 5}));  // would expire at t=60
    clock.advance(10);
    p.on_pinned(1);
    CHECK(p.num_candidates() == 0);
    clock.advance(40);
    p.on_evictable(1, clock.stamp({.priority = 5}));  // t=50: retained until t=110
    clock.advance(5);
    p.on_evictable(2, clock.stamp({.priority = 0}));  // t=55
    // The old end of retention (t=60) must not demote block 1 (released at 50, before block 2).
    CHECK(victim(p, 70.0) == 2);
    CHECK(victim(p, 109.0) == 2);
    CHECK(victim(p, 111.0) == 1);
  }
  SECTION("re-reported without a pin") {
    p.on_evictable(1, clock.stamp({.priority = 5}));
    clock.advance(30);
    p.on_evictable(1, clock.stamp({.priority = 5}));  // t=30: retained until t=90
    clock.advance(10);
    p.on_evictable(2, clock.stamp({.priority = 0}));  // t=40
    CHECK(victim(p, 70.0) == 2);
    CHECK(victim(p, 91.0) == 1);
  }
  SECTION("removed") {
    p.on_evictable(1, clock.stamp({.priority = 5}));
    p.on_removed(1);
    CHECK_FALSE(p.pick_victim(1000.0).has_value());  // its retention ending is no event
    CHECK(p.num_candidates() == 0);
  }
  SECTION("removed, then cached again under the same id") {
    p.on_evictable(1, clock.stamp({.priority = 5}));  // would expire at t=60
    clock.advance(10);
    p.on_removed(1);
    p.on_evictable(1, clock.stamp({.priority = 5}));  // t=10: retained until t=70
    clock.advance(5);
    p.on_evictable(2, clock.stamp({.priority = 0}));
    CHECK(victim(p, 65.0) == 2);
    CHECK(victim(p, 71.0) == 1);
  }
  SECTION("re-reported at the default priority, then removed") {
    p.on_evictable(1, clock.stamp({.priority = 5}));
    clock.advance(5);
    p.on_evictable(1, clock.stamp({.priority = 0}));
    clock.advance(5);
    p.on_evictable(2, clock.stamp({.priority = 3}));
    CHECK(victim(p, clock.now) == 1);
    p.on_removed(1);
    CHECK(p.num_candidates() == 1);
    CHECK(victim(p, 1000.0) == 2);
    p.on_removed(2);
    CHECK_FALSE(p.pick_victim(2000.0).has_value());
  }
  SECTION("demoted, pinned, released again with a priority") {
    p.on_evictable(1, clock.stamp({.priority = 5}));
    clock.advance(10);
    p.on_evictable(2, clock.stamp({.priority = 0}));
    CHECK(victim(p, 100.0) == 1);  // retention over: 1 is a default block released before 2
    clock.now = 100;
    p.on_pinned(1);
    p.on_evictable(1, clock.stamp({.priority = 5}));  // retained until t=160
    CHECK(victim(p, 150.0) == 2);
    CHECK(victim(p, 161.0) == 2);  // both default now; block 2 is older
    p.on_removed(2);
    CHECK(victim(p, 161.0) == 1);
  }
}

TEST_CASE("priority eviction rejects a negative or NaN retention", "[eviction]") {
  for (const double r : {-1.0, -1e-9, -kInf, kNaN}) {
    CAPTURE(r);
    CHECK(chunkwise::test::error_code([&] { PriorityEviction p(r); }) == ErrorCode::kInvalidArgument);
  }
  for (const double r : {0.0, 1.0, kInf}) {
    CAPTURE(r);
    CHECK_FALSE(chunkwise::test::error_code([&] { PriorityEviction p(r); }).has_value());
  }
}

TEST_CASE("priority eviction agrees with a brute-force reference under random traffic", "[eviction]") {
  constexpr double kRetention = 20.0;
  constexpr int kDefault = 0;
  PriorityEviction p(kRetention, kDefault);
  struct Candidate {
    int priority;
    double last_use;
    int depth;
  };
  std::map<BlockId, Candidate> ref;
  std::mt19937 rng(424242);
  std::uniform_int_distribution<int> op_dist(0, 99);
  std::uniform_int_distribution<BlockId> id_dist(0, 99);
  std::uniform_int_distribution<int> step_dist(0, 2);
  std::uniform_int_distribution<int> prio_dist(-1, 2);
  std::uniform_int_distribution<int> depth_dist(0, 5);
  FakeClock clock;
  int mismatches = 0;
  for (int step = 0; step < 20000; ++step) {
    clock.advance(step_dist(rng));  // the session's clock never goes back
    const int op = op_dist(rng);
    const BlockId b = id_dist(rng);
    if (op < 55) {
      const BlockInfo info = clock.stamp({.depth = depth_dist(rng), .priority = prio_dist(rng)});
      p.on_evictable(b, info);
      ref[b] = {info.priority, info.now_s, info.depth};
    } else if (op < 80) {
      p.on_pinned(b);
      ref.erase(b);
    } else {
      p.on_removed(b);
      ref.erase(b);
    }
    if (p.num_candidates() != ref.size()) ++mismatches;
    const double now = clock.now;
    auto key = [&](const Candidate& c) {
      const bool retained = c.priority != kDefault && now < c.last_use + kRetention;
      return std::make_tuple(retained ? c.priority : kDefault, c.last_use, -c.depth);
    };
    const std::optional<BlockId> got = p.pick_victim(now);
    if (ref.empty()) {
      if (got.has_value()) ++mismatches;
      continue;
    }
    const auto best = std::min_element(
        ref.begin(), ref.end(), [&](const auto& x, const auto& y) { return key(x.second) < key(y.second); });
    if (!got.has_value() || !ref.contains(*got) || key(ref.at(*got)) != key(best->second)) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("cost-aware eviction agrees with a brute-force reference under random traffic", "[eviction]") {
  // Blocks follow the cache's protocol: cached (referenced), hit while referenced, released
  // (candidate), pinned again by a lookup, removed. The reference keeps every use time.
  constexpr double kHalfLife = 5.0;
  constexpr double kAttention = 64.0;
  CostAwareEviction p(kHalfLife, kAttention);
  enum class State { kAbsent, kReferenced, kCandidate };
  struct Block {
    State state = State::kAbsent;
    std::vector<double> uses;
    BlockInfo info;  // as last reported evictable
  };
  std::map<BlockId, Block> ref;
  std::mt19937 rng(99);
  std::uniform_int_distribution<BlockId> id_dist(0, 63);
  std::uniform_int_distribution<int> coin(0, 99);
  std::uniform_int_distribution<int> depth_dist(0, 8);
  std::uniform_int_distribution<int> bytes_dist(1, 4);
  std::uniform_real_distribution<double> step_dist(0.0, 0.5);
  FakeClock clock;
  int mismatches = 0;
  int picks = 0;
  for (int step = 0; step < 20000; ++step) {
    clock.advance(step_dist(rng));
    const BlockId b = id_dist(rng);
    Block& blk = ref[b];
    const int c = coin(rng);
    switch (blk.state) {
      case State::kAbsent: {
        const int depth = depth_dist(rng);
        blk.info = chain_block(depth);
        blk.info.bytes = static_cast<std::size_t>(bytes_dist(rng)) * 512;
        p.on_cached(b, clock.stamp(blk.info));
        blk.uses = {clock.now};
        blk.state = State::kReferenced;
        break;
      }
      case State::kReferenced:
        if (c < 40) {
          p.on_hit(b, clock.stamp(blk.info));
          blk.uses.push_back(clock.now);
        } else {
          p.on_evictable(b, clock.stamp(blk.info));
          blk.state = State::kCandidate;
        }
        break;
      case State::kCandidate:
        if (c < 50) {
          p.on_pinned(b);
          blk.state = State::kReferenced;
        } else {
          p.on_removed(b);
          blk = Block{};
        }
        break;
    }
    const double now = clock.now;
    // log(frequency at now x cost / bytes) straight from the definition.
    auto log_value = [&](const Block& x) {
      double freq = 0;
      for (const double t : x.uses) freq += std::exp2(-(now - t) / kHalfLife);
      const double tokens = x.info.tokens;
      const double cost =
          tokens * (1.0 + (static_cast<double>(x.info.tokens_before) + tokens / 2.0) / kAttention);
      return std::log(freq) + std::log(cost / static_cast<double>(x.info.bytes));
    };
    std::size_t candidates = 0;
    double best = kInf;
    for (const auto& [id, x] : ref) {
      if (x.state != State::kCandidate) continue;
      ++candidates;
      best = std::min(best, log_value(x));
    }
    if (p.num_candidates() != candidates) ++mismatches;
    const std::optional<BlockId> got = p.pick_victim(now);
    if (candidates == 0) {
      if (got.has_value()) ++mismatches;
      continue;
    }
    ++picks;
    // Within rounding of the smallest value: which of two (nearly) equal values goes is free.
    if (!got.has_value() || ref.at(*got).state != State::kCandidate ||
        log_value(ref.at(*got)) > best + 1e-9) {
      ++mismatches;
    }
  }
  CHECK(picks > 1000);
  CHECK(mismatches == 0);
}
