// The batching policies (prefill-first, stall-free, prefix-grouped, packed prefill), tested on views
// alone: the rules each one implements, then random views against the session's plan checks.
#include <algorithm>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/batching/packed_prefill_batching.hpp"
#include "chunkwise/policy/batching/prefill_first_batching.hpp"
#include "chunkwise/policy/batching/prefix_grouped_batching.hpp"
#include "chunkwise/policy/batching/stall_free_batching.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "error_code.hpp"

using namespace chunkwise;

static_assert(BatchingPolicy<PrefillFirstBatching>);
static_assert(BatchingPolicy<StallFreeBatching>);
static_assert(BatchingPolicy<PrefixGroupedBatching>);
static_assert(BatchingPolicy<PackedPrefillBatching>);

namespace {

SequenceView seq(RequestId id, int prompt, int computed, int generated, int max_new = 16, int priority = 0,
                 double submitted_s = 0) {
  SequenceView v;
  v.id = id;
  v.prompt_len = prompt;
  v.total_len = prompt + generated;
  v.computed = computed;
  v.generated = generated;
  v.max_new_tokens = max_new;
  v.priority = priority;
  v.submitted_s = submitted_s;
  return v;
}
// Running, one token to compute; len = prompt + 1 generated.
SequenceView decoding(RequestId id, int len, int max_new = 16) {
  return seq(id, len - 1, len - 1, 1, max_new);
}
// Running, prompt partly computed.
SequenceView prefilling(RequestId id, int prompt, int computed) {
  return seq(id, prompt, computed, 0);
}
// Waiting, `cached` tokens found in the prefix cache.
SequenceView waiting(RequestId id, int prompt, int priority = 0, double submitted_s = 0, int cached = 0) {
  return seq(id, prompt, cached, 0, 16, priority, submitted_s);
}

Budgets budgets(int tokens, int seqs, int free_blocks, int block_size = 16) {
  Budgets b;
  b.max_batch_tokens = tokens;
  b.max_sequences = seqs;
  b.free_blocks = free_blocks;
  b.block_size = block_size;
  b.total_blocks = 1000;
  return b;
}

// "id:tokens id:tokens ...", so that a failing comparison prints the whole plan.
std::string show(const StepPlan& plan) {
  std::string out;
  for (const ScheduledChunk& c : plan.chunks) {
    if (!out.empty()) out.push_back(' ');
    out.append(std::to_string(c.id)).push_back(':');
    out.append(std::to_string(c.num_tokens));
  }
  return out;
}

// The session's check_plan, restated: empty when the plan is valid, else what is wrong.
std::string plan_error(const StepPlan& plan, const SchedulerView& view) {
  std::unordered_map<RequestId, const SequenceView*> by_id;
  for (auto list : {view.running, view.waiting})
    for (const SequenceView& v : list) by_id.emplace(v.id, &v);
  std::unordered_set<RequestId> seen;
  long long tokens = 0, blocks = 0;
  for (const ScheduledChunk& c : plan.chunks) {
    auto it = by_id.find(c.id);
    if (it == by_id.end()) return "unknown request " + std::to_string(c.id);
    if (!seen.insert(c.id).second) return "request " + std::to_string(c.id) + " twice";
    const SequenceView& v = *it->second;
    if (c.num_tokens < 1 || c.num_tokens > v.uncomputed())
      return "chunk of " + std::to_string(c.num_tokens) + " for " + std::to_string(v.uncomputed()) +
             " uncomputed";
    tokens += c.num_tokens;
    blocks += view.blocks_needed(v, c.num_tokens);
  }
  if (tokens > view.budgets.max_batch_tokens) return "more tokens than max_batch_tokens";
  if (static_cast<int>(plan.chunks.size()) > view.budgets.max_sequences)
    return "more sequences than max_sequences";
  if (blocks > view.budgets.free_blocks) return "more blocks than free";
  return {};
}

// Tokens of n distinct values after `shared` tokens of family f (a prefix several prompts share).
std::vector<TokenId> prompt_tokens(int family, int shared, int unique_seed, int n) {
  std::vector<TokenId> t;
  for (int i = 0; i < n; ++i) t.push_back(i < shared ? 1000 * family + i : 100000 + 1000 * unique_seed + i);
  return t;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Prefill-first (Orca / vLLM V0)

TEST_CASE("prefill-first: an admissible prompt makes the step prefill-only", "[batching]") {
  const std::vector<SequenceView> running = {decoding(1, 20), decoding(2, 33)};
  const std::vector<SequenceView> queue = {waiting(3, 10), waiting(4, 50), waiting(5, 5)};
  const SchedulerView view{running, queue, budgets(60, 8, 100)};
  // Whole prompts until the budget is spent; the decodes stall this step.
  CHECK(show(PrefillFirstBatching{}.plan(view)) == "3:10 4:50");
}

TEST_CASE("prefill-first: prompts are admitted whole, in order", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 30), waiting(2, 40), waiting(3, 5)};
  const SchedulerView view{{}, queue, budgets(60, 8, 100)};
  CHECK(show(PrefillFirstBatching{}.plan(view)) == "1:30");  // 2 does not fit whole, 3 may not overtake it
}

TEST_CASE("prefill-first: a prompt longer than the budget is cut only when first", "[batching]") {
  SECTION("first in the step") {
    const std::vector<SequenceView> queue = {waiting(1, 100)};
    CHECK(show(PrefillFirstBatching{}.plan({{}, queue, budgets(64, 8, 100)})) == "1:64");
  }
  SECTION("behind another prompt") {
    const std::vector<SequenceView> queue = {waiting(1, 10), waiting(2, 100)};
    CHECK(show(PrefillFirstBatching{}.plan({{}, queue, budgets(64, 8, 100)})) == "1:10");
  }
}

TEST_CASE("prefill-first: with nothing admissible, every running sequence runs", "[batching]") {
  const std::vector<SequenceView> running = {decoding(1, 20), decoding(2, 33), prefilling(3, 100, 32)};
  const std::vector<SequenceView> queue = {waiting(4, 200)};  // 13 blocks: more than is free
  const SchedulerView view{running, queue, budgets(512, 8, 10)};
  CHECK(show(PrefillFirstBatching{}.plan(view)) == "1:1 2:1 3:68");
  SECTION("and with nothing waiting") {
    CHECK(show(PrefillFirstBatching{}.plan({running, {}, budgets(512, 8, 10)})) == "1:1 2:1 3:68");
  }
}

TEST_CASE("prefill-first: one free block per running sequence stays in reserve", "[batching]") {
  // Running: 2 decodes; the admitted prompt's own first decode counts too (3 reserved).
  const std::vector<SequenceView> running = {decoding(1, 33), decoding(2, 49)};
  SECTION("4 blocks with 3 reserved of 7") {
    const std::vector<SequenceView> queue = {waiting(3, 64)};
    CHECK(show(PrefillFirstBatching{}.plan({running, queue, budgets(512, 8, 7)})) == "3:64");
  }
  SECTION("4 blocks with 3 reserved do not fit in 6: a decode step instead") {
    const std::vector<SequenceView> queue = {waiting(3, 64)};
    CHECK(show(PrefillFirstBatching{}.plan({running, queue, budgets(512, 8, 6)})) == "1:1 2:1");
  }
  SECTION("5 blocks do not fit: a decode step instead") {
    const std::vector<SequenceView> queue = {waiting(3, 80)};
    CHECK(show(PrefillFirstBatching{}.plan({running, queue, budgets(512, 8, 7)})) == "1:1 2:1");
  }
}

TEST_CASE("prefill-first: cached prefix blocks that admission pins count against free memory", "[batching]") {
  // A preempted request readmitted over its own cached prefix: 560 tokens cached (35 blocks nobody
  // holds, counted in free_blocks), 16 to compute. Counting only the new block, it would be
  // admitted, pin the 35 and leave the decodes short: preempted at once, readmitted, forever.
  const std::vector<SequenceView> running = {decoding(1, 33), decoding(2, 49)};
  SequenceView w = waiting(3, 576);
  w.computed = 560;
  w.prefix_blocks_taken = 35;
  const std::vector<SequenceView> queue = {w};
  CHECK(show(PrefillFirstBatching{}.plan({running, queue, budgets(512, 8, 20)})) == "1:1 2:1");
  CHECK(show(PrefillFirstBatching{}.plan({running, queue, budgets(512, 8, 39)})) == "3:16");
}

TEST_CASE("prefill-first: with nothing running, the first prompt is cut to free memory", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 100), waiting(2, 10)};
  CHECK(show(PrefillFirstBatching{}.plan({{}, queue, budgets(512, 8, 2)})) == "1:32");
}

TEST_CASE("prefill-first: higher priority first, then arrival", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 10, 0, 0.0), waiting(2, 10, 5, 2.0),
                                           waiting(3, 10, 0, 1.0), waiting(4, 10, 5, 1.5)};
  CHECK(show(PrefillFirstBatching{}.plan({{}, queue, budgets(30, 8, 100)})) == "4:10 2:10 1:10");
}

// ---------------------------------------------------------------------------------------------
// Stall-free (SARATHI / Sarathi-Serve)

TEST_CASE("stall-free: decodes first, then a block-aligned prefill chunk", "[batching]") {
  const std::vector<SequenceView> running = {decoding(1, 20), decoding(2, 33), decoding(3, 40)};
  const std::vector<SequenceView> queue = {waiting(4, 100)};
  const SchedulerView view{running, queue, budgets(512, 8, 100)};
  // 61 tokens are left after the decodes; the chunk stops at the block boundary 48.
  CHECK(show(StallFreeBatching(64).plan(view)) == "1:1 2:1 3:1 4:48");
}

TEST_CASE("stall-free: decodes are never starved by prefills", "[batching]") {
  std::vector<SequenceView> running;
  for (RequestId id = 1; id <= 40; ++id) running.push_back(decoding(id, 50));
  running.push_back(prefilling(41, 1000, 0 + 16));
  const std::vector<SequenceView> queue = {waiting(42, 500)};
  const StepPlan plan = StallFreeBatching(64, 0).plan({running, queue, budgets(512, 64, 1000)});
  REQUIRE(plan.chunks.size() == 42);
  for (int i = 0; i < 40; ++i) CHECK(plan.chunks[static_cast<std::size_t>(i)].num_tokens == 1);
  CHECK(plan.chunks[40].id == 41);
  CHECK(plan.chunks[40].num_tokens == 16);  // 24 left: 16 + 16 = 32 is a block boundary
  CHECK(plan.chunks[41].id == 42);
  CHECK(plan.chunks[41].num_tokens == 8);  // no boundary reachable with 8: takes what fits
}

TEST_CASE("stall-free: ongoing prefills before new requests, cut on block boundaries", "[batching]") {
  const std::vector<SequenceView> running = {decoding(1, 20), prefilling(2, 200, 32)};
  const std::vector<SequenceView> queue = {waiting(3, 10)};
  const SchedulerView view{running, queue, budgets(512, 8, 100)};
  // 99 tokens left for request 2: 32 + 99 = 131, cut back to 128. Request 3 would be left half-done
  // with the 3 tokens that remain, and 2 already is: the cap of one partial prefill holds it back.
  CHECK(show(StallFreeBatching(100, 1).plan(view)) == "1:1 2:96");
  CHECK(show(StallFreeBatching(100, 0).plan(view)) == "1:1 2:96 3:3");
}

TEST_CASE("stall-free: a chunk that finishes its prompt is not aligned", "[batching]") {
  const std::vector<SequenceView> running = {prefilling(1, 50, 32)};
  CHECK(show(StallFreeBatching(512).plan({running, {}, budgets(512, 8, 100)})) == "1:18");
}

TEST_CASE("stall-free: with no block boundary in reach, the chunk takes what fits", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 100)};
  CHECK(show(StallFreeBatching(10).plan({{}, queue, budgets(512, 8, 100, 32)})) == "1:10");
}

TEST_CASE("stall-free: the partial-prefill cap counts prompts left half-done", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 100), waiting(2, 100), waiting(3, 100)};
  const SchedulerView view{{}, queue, budgets(512, 8, 100)};
  // 1 finishes (does not count), 2 is cut at 48 and is the one partial prefill allowed.
  CHECK(show(StallFreeBatching(150, 1).plan(view)) == "1:100 2:48");
  CHECK(show(StallFreeBatching(150, 2).plan(view)) == "1:100 2:48 3:2");
  CHECK(show(StallFreeBatching(150, 0).plan(view)) == "1:100 2:48 3:2");
  SECTION("a short prompt that finishes in the step is still admitted") {
    const std::vector<SequenceView> q2 = {waiting(1, 1000), waiting(2, 5)};
    CHECK(show(StallFreeBatching(150, 1).plan({{}, q2, budgets(512, 8, 100)})) == "1:144 2:5");
  }
}

TEST_CASE("stall-free: the budget is the smaller of its own and the session's", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 1000)};
  CHECK(show(StallFreeBatching(512).plan({{}, queue, budgets(100, 8, 100)})) == "1:96");
}

TEST_CASE("stall-free: new requests keep a block per running sequence in reserve", "[batching]") {
  const std::vector<SequenceView> running = {decoding(1, 33), decoding(2, 49)};
  const std::vector<SequenceView> queue = {waiting(3, 80)};
  // The decodes take 2 of 6 blocks, 2 stay reserved: 2 blocks (32 tokens) for request 3.
  CHECK(show(StallFreeBatching(512).plan({running, queue, budgets(512, 8, 6)})) == "1:1 2:1 3:32");
}

TEST_CASE("stall-free: higher priority first", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 40, 0, 0.0), waiting(2, 40, 1, 5.0)};
  CHECK(show(StallFreeBatching(64, 0).plan({{}, queue, budgets(512, 8, 100)})) == "2:40 1:16");
}

TEST_CASE("stall-free: bad parameters are rejected", "[batching]") {
  CHECK(test::error_code([] { StallFreeBatching(0); }) == ErrorCode::kInvalidArgument);
  CHECK(test::error_code([] { StallFreeBatching(512, -1); }) == ErrorCode::kInvalidArgument);
  CHECK_FALSE(test::error_code([] { StallFreeBatching(1, 0); }).has_value());
}

// ---------------------------------------------------------------------------------------------
// Packed prefill (Prepacking)

TEST_CASE("packed prefill: decodes first, then whole prompts fill the budget", "[batching]") {
  const std::vector<SequenceView> running = {decoding(1, 20), decoding(2, 33)};
  const std::vector<SequenceView> queue = {waiting(3, 60), waiting(4, 50), waiting(5, 38), waiting(6, 10)};
  const StepPlan plan = PackedPrefillBatching(100).plan({running, queue, budgets(512, 8, 100)});
  CHECK(show(plan) == "1:1 2:1 3:60 5:38");  // 100 tokens exactly; 4 (50) skipped, 5 (38) fills the gap
}

TEST_CASE("packed prefill: prompts are never split to fill the budget", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 70), waiting(2, 60)};
  const SchedulerView view{{}, queue, budgets(100, 8, 100)};
  CHECK(show(PackedPrefillBatching(100).plan(view)) == "1:70");
}

TEST_CASE("packed prefill: first-fit decreasing behind the oldest request", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 20), waiting(2, 10), waiting(3, 300), waiting(4, 30),
                                           waiting(5, 45)};
  // 1 first (oldest), then longest first: 300 does not fit, 45, 30 do; 10 no longer fits.
  CHECK(show(PackedPrefillBatching(100).plan({{}, queue, budgets(512, 8, 100)})) == "1:20 5:45 4:30");
}

TEST_CASE("packed prefill: a prompt too long for the budget is cut and runs alone", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 300), waiting(2, 20)};
  CHECK(show(PackedPrefillBatching(100).plan({{}, queue, budgets(512, 8, 100)})) == "1:96");
  SECTION("and continues before new prompts join") {
    const std::vector<SequenceView> running = {prefilling(1, 300, 96)};
    const std::vector<SequenceView> rest = {waiting(2, 20)};
    CHECK(show(PackedPrefillBatching(100).plan({running, rest, budgets(512, 8, 100)})) == "1:96");
    const std::vector<SequenceView> last = {prefilling(1, 300, 288)};
    CHECK(show(PackedPrefillBatching(100).plan({last, rest, budgets(512, 8, 100)})) == "1:12 2:20");
  }
}

TEST_CASE("packed prefill: priority classes are packed in order", "[batching]") {
  const std::vector<SequenceView> queue = {waiting(1, 40, 0, 0.0), waiting(2, 30, 1, 1.0),
                                           waiting(3, 50, 1, 2.0), waiting(4, 15, 0, 3.0)};
  // Class 1: 2 (oldest) then 3; class 0 then fills what is left: 40 does not fit, 15 does.
  CHECK(show(PackedPrefillBatching(100).plan({{}, queue, budgets(512, 8, 100)})) == "2:30 3:50 4:15");
}

TEST_CASE("packed prefill: admission keeps a block per running sequence", "[batching]") {
  const std::vector<SequenceView> running = {decoding(1, 33), decoding(2, 49)};
  const std::vector<SequenceView> queue = {waiting(3, 64), waiting(4, 16)};
  // 6 free, 2 for the decodes, 3 reserved (the 2 decodes' next blocks and its own first decode):
  // 3 (4 blocks) cannot run whole, so it is cut alone, keeping only the decodes' 2 in reserve.
  CHECK(show(PackedPrefillBatching(512).plan({running, queue, budgets(512, 8, 6)})) == "1:1 2:1 3:32");
  // 8 free: still short of 4 + 3, cut on a block boundary short of its last token.
  CHECK(show(PackedPrefillBatching(512).plan({running, queue, budgets(512, 8, 8)})) == "1:1 2:1 3:48");
  // 9 free: it fits whole; then 4 (1 block) would leave fewer than 4 reserved.
  CHECK(show(PackedPrefillBatching(512).plan({running, queue, budgets(512, 8, 9)})) == "1:1 2:1 3:64");
}

TEST_CASE("packed prefill: bad parameters are rejected", "[batching]") {
  CHECK(test::error_code([] { PackedPrefillBatching(0); }) == ErrorCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Prefix-grouped (BatchLLM)

TEST_CASE("prefix-grouped: groups by shared prefix, decode-heavy groups first, leaders only", "[batching]") {
  const auto ta1 = prompt_tokens(1, 64, 1, 100), ta2 = prompt_tokens(1, 64, 2, 100);
  const auto tb1 = prompt_tokens(2, 64, 3, 100), tb2 = prompt_tokens(2, 64, 4, 100);
  const auto tc = prompt_tokens(3, 0, 5, 100);
  std::vector<SequenceView> queue = {seq(1, 100, 0, 0, 10, 0, 0.0), seq(2, 100, 0, 0, 150, 0, 1.0),
                                     seq(3, 100, 0, 0, 100, 0, 2.0), seq(4, 100, 0, 0, 10, 0, 3.0),
                                     seq(5, 100, 0, 0, 250, 0, 4.0)};
  queue[0].tokens = ta1;  // group A: ratio 0.1
  queue[1].tokens = tb1;  // group B: ratios 1.5 and 2.5
  queue[2].tokens = tc;   // alone: 1.0
  queue[3].tokens = ta2;
  queue[4].tokens = tb2;
  const SchedulerView view{{}, queue, budgets(4096, 64, 1000)};
  const PrefixGroupedBatching policy(4096, 32);
  const auto groups = policy.groups(view);
  REQUIRE(groups.size() == 3);
  CHECK(groups[0].shared == 64);
  CHECK(groups[0].waiting.size() == 2);
  CHECK(groups[0].waiting[0]->id == 5);  // decode-heavy first within the group
  CHECK(groups[1].shared == 0);
  CHECK(groups[1].waiting[0]->id == 3);
  CHECK(groups[2].shared == 64);
  CHECK(groups[2].waiting[0]->id == 1);
  // No prefix is computed yet: one leader per group; its siblings follow once it is.
  CHECK(show(policy.plan(view)) == "5:100 3:100 1:100");
  SECTION("a larger min_shared_tokens splits the groups") {
    CHECK(PrefixGroupedBatching(4096, 65).groups(view).size() == 5);
  }
}

TEST_CASE("prefix-grouped: running groups first, siblings follow once the prefix is computed", "[batching]") {
  const auto ta1 = prompt_tokens(1, 64, 1, 101), ta2 = prompt_tokens(1, 64, 2, 100);
  const auto tb = prompt_tokens(2, 64, 3, 100);
  std::vector<SequenceView> running = {seq(1, 100, 100, 1, 10)};  // group A's leader, decoding
  running[0].tokens = ta1;
  std::vector<SequenceView> queue = {seq(2, 100, 0, 0, 150, 0, 0.0), seq(3, 100, 64, 0, 10, 0, 1.0)};
  queue[0].tokens = tb;   // a decode-heavier group, not started
  queue[1].tokens = ta2;  // A's sibling: the shared 64 tokens are cached
  const SchedulerView view{running, queue, budgets(4096, 64, 1000)};
  CHECK(show(PrefixGroupedBatching(4096, 32).plan(view)) == "1:1 3:36 2:100");
}

TEST_CASE("prefix-grouped: siblings wait while the leader computes the prefix", "[batching]") {
  const auto ta1 = prompt_tokens(1, 64, 1, 100), ta2 = prompt_tokens(1, 64, 2, 100);
  const auto tc = prompt_tokens(3, 0, 5, 100);
  std::vector<SequenceView> running = {seq(1, 100, 16, 0, 10)};
  running[0].tokens = ta1;
  std::vector<SequenceView> queue = {seq(2, 100, 0, 0, 10, 0, 0.0), seq(3, 100, 0, 0, 10, 0, 1.0)};
  queue[0].tokens = ta2;
  queue[1].tokens = tc;
  const SchedulerView view{running, queue, budgets(4096, 64, 1000)};
  CHECK(show(PrefixGroupedBatching(4096, 32).plan(view)) == "1:84 3:100");
}

TEST_CASE("prefix-grouped: priority before decode ratio", "[batching]") {
  const std::vector<SequenceView> queue = {seq(1, 100, 0, 0, 300, 0, 0.0), seq(2, 100, 0, 0, 10, 2, 1.0),
                                           seq(3, 100, 0, 0, 200, 0, 2.0)};
  CHECK(show(PrefixGroupedBatching(4096, 32).plan({{}, queue, budgets(4096, 64, 1000)})) ==
        "2:100 1:100 3:100");
}

TEST_CASE("prefix-grouped: admission stops when projected KV exceeds the pool", "[batching]") {
  // Each request grows to 64 + 64 tokens = 8 blocks, though its prefill needs only 4.
  std::vector<SequenceView> queue;
  for (RequestId id = 1; id <= 4; ++id) queue.push_back(seq(id, 64, 0, 0, 64, 0, static_cast<double>(id)));
  CHECK(show(PrefixGroupedBatching().plan({{}, queue, budgets(4096, 64, 18)})) == "1:64 2:64");
  // A per-step memory check keeping a block per sequence in reserve would admit three.
  CHECK(PrefillFirstBatching{}.plan({{}, queue, budgets(4096, 64, 18)}).chunks.size() == 3);
  SECTION("running sequences' growth counts too") {
    const std::vector<SequenceView> running = {seq(9, 64, 64, 1, 64)};  // 8 blocks, holds 4
    CHECK(show(PrefixGroupedBatching().plan({running, queue, budgets(4096, 64, 18)})) == "9:1 1:64");
  }
  SECTION("with nothing running, one request is admitted even if it cannot grow in full") {
    const std::vector<SequenceView> big = {seq(1, 32, 0, 0, 200)};
    CHECK(show(PrefixGroupedBatching().plan({{}, big, budgets(4096, 64, 4)})) == "1:32");
  }
}

TEST_CASE("prefix-grouped: a group's shared prefix counts once", "[batching]") {
  // Leader decoding: 80 + 48 tokens = 8 blocks, holds 5 (grows 3). Siblings share 64 tokens (4 blocks).
  const auto t1 = prompt_tokens(1, 64, 1, 81);
  std::vector<std::vector<TokenId>> toks;
  for (int i = 2; i <= 6; ++i) toks.push_back(prompt_tokens(1, 64, i, 80));
  std::vector<SequenceView> running = {seq(1, 80, 80, 1, 48)};
  running[0].tokens = t1;
  std::vector<SequenceView> queue;
  for (RequestId id = 2; id <= 6; ++id) {
    queue.push_back(seq(id, 80, 64, 0, 48, 0, static_cast<double>(id)));
    queue.back().tokens = toks[id - 2];
  }
  // 3 + 4 + 4 + 4 + 4 = 19 <= 20: four siblings, each growing by 4 blocks only.
  CHECK(PrefixGroupedBatching().plan({running, queue, budgets(4096, 64, 20)}).chunks.size() == 5);
  SECTION("unrelated prompts grow by 8 blocks each") {
    std::vector<SequenceView> alone;
    for (RequestId id = 2; id <= 6; ++id) alone.push_back(seq(id, 80, 0, 0, 48, 0, static_cast<double>(id)));
    CHECK(PrefixGroupedBatching().plan({running, alone, budgets(4096, 64, 20)}).chunks.size() == 3);
  }
}

TEST_CASE("prefix-grouped: decodes first, then prefills within the token budget", "[batching]") {
  const std::vector<SequenceView> running = {decoding(1, 20), decoding(2, 33), decoding(3, 40)};
  const std::vector<SequenceView> queue = {waiting(4, 100)};
  CHECK(show(PrefixGroupedBatching(64).plan({running, queue, budgets(4096, 64, 1000)})) ==
        "1:1 2:1 3:1 4:61");
  CHECK(show(PrefixGroupedBatching(4096).plan({running, queue, budgets(50, 2, 1000)})) == "1:1 2:1");
}

TEST_CASE("prefix-grouped: bad parameters are rejected", "[batching]") {
  CHECK(test::error_code([] { PrefixGroupedBatching(0); }) == ErrorCode::kInvalidArgument);
  CHECK(test::error_code([] { PrefixGroupedBatching(4096, 0); }) == ErrorCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Every policy, random views

namespace {

// A random view, and the token storage its spans point into.
struct RandomView {
  std::vector<std::vector<TokenId>> tokens;
  std::vector<SequenceView> running, waiting;
  Budgets budgets;
  [[nodiscard]] SchedulerView view() const { return {running, waiting, budgets}; }
};

RandomView random_view(std::mt19937& rng) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  RandomView r;
  r.budgets.block_size = uni(1, 32);
  r.budgets.max_batch_tokens = uni(0, 9) == 0 ? uni(1, 8) : uni(1, 700);
  r.budgets.max_sequences = uni(1, 24);
  r.budgets.free_blocks = uni(0, 4) == 0 ? uni(0, 2) : uni(0, 80);
  r.budgets.total_blocks = r.budgets.free_blocks + uni(0, 100);
  const int bs = r.budgets.block_size;
  const int n_running = uni(0, 4) == 0 ? 0 : uni(1, 10);
  const int n_waiting = uni(0, 4) == 0 ? 0 : uni(1, 12);
  r.tokens.reserve(static_cast<std::size_t>(n_running + n_waiting));
  std::vector<RequestId> ids(static_cast<std::size_t>(n_running + n_waiting));
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = 1 + i * 7;
  std::shuffle(ids.begin(), ids.end(), rng);
  std::size_t next_id = 0;
  auto fill_tokens = [&](SequenceView& v) {
    std::vector<TokenId> t = prompt_tokens(uni(0, 2), uni(0, 80), uni(0, 1000000), v.total_len);
    for (TokenId& x : t)  // a small alphabet sometimes, so prefixes also match by chance
      if (uni(0, 9) == 0) x = uni(0, 3);
    r.tokens.push_back(std::move(t));
    v.tokens = r.tokens.back();
  };
  for (int i = 0; i < n_running; ++i) {
    SequenceView v;
    v.id = ids[next_id++];
    v.prompt_len = uni(1, 300);
    v.max_new_tokens = uni(0, 300);
    v.priority = uni(0, 2);
    v.submitted_s = uni(0, 1000) / 10.0;
    switch (uni(0, 9)) {
      case 0:
      case 1:
      case 2:  // ongoing prefill
        v.total_len = v.prompt_len;
        v.computed = uni(0, v.prompt_len - 1);
        break;
      case 3:  // generated, several tokens to recompute
        v.generated = uni(1, 20);
        v.total_len = v.prompt_len + v.generated;
        v.computed = uni(0, v.total_len - 1);
        break;
      case 4:  // nothing left to compute
        v.generated = uni(0, 5);
        v.total_len = v.prompt_len + v.generated;
        v.computed = v.total_len;
        break;
      default:  // decode
        v.generated = uni(1, 50);
        v.total_len = v.prompt_len + v.generated;
        v.computed = v.total_len - 1;
    }
    fill_tokens(v);
    r.running.push_back(v);
  }
  for (int i = 0; i < n_waiting; ++i) {
    SequenceView v;
    v.id = ids[next_id++];
    v.prompt_len = uni(0, 3) == 0 ? uni(300, 1500) : uni(1, 200);
    v.generated = uni(0, 5) == 0 ? uni(1, 30) : 0;  // preempted and recomputed
    v.total_len = v.prompt_len + v.generated;
    v.max_new_tokens = uni(0, 300);
    v.priority = uni(0, 2);
    v.submitted_s = uni(0, 1000) / 10.0;
    if (uni(0, 2) == 0) v.computed = (uni(0, v.total_len - 1) / bs) * bs;  // a cached prefix
    fill_tokens(v);
    r.waiting.push_back(v);
  }
  return r;
}

// Whether a valid plan with at least one chunk exists that every policy must find: some running
// sequence can take a token, or nothing runs and the head of the queue can.
bool must_progress(const SchedulerView& view) {
  if (view.budgets.max_batch_tokens < 1 || view.budgets.max_sequences < 1) return false;
  for (const SequenceView& s : view.running)
    if (s.uncomputed() >= 1 && view.blocks_needed(s, 1) <= view.budgets.free_blocks) return true;
  if (!view.running.empty()) return false;
  for (const SequenceView& s : view.waiting)
    if (s.uncomputed() >= 1) return view.budgets.free_blocks >= 1;
  return false;
}

bool in_plan(const StepPlan& plan, RequestId id) {
  return std::any_of(plan.chunks.begin(), plan.chunks.end(),
                     [id](const ScheduledChunk& c) { return c.id == id; });
}

// Every running decode is in the plan whenever all of them fit.
bool decodes_first_holds(const StepPlan& plan, const SchedulerView& view, int budget) {
  int n = 0, blocks = 0;
  for (const SequenceView& s : view.running)
    if (s.is_decode()) {
      ++n;
      blocks += view.blocks_needed(s, 1);
    }
  if (n > std::min(budget, view.budgets.max_batch_tokens) || n > view.budgets.max_sequences ||
      blocks > view.budgets.free_blocks)
    return true;
  for (const SequenceView& s : view.running)
    if (s.is_decode() && !in_plan(plan, s.id)) return false;
  return true;
}

const SequenceView* find(const SchedulerView& view, RequestId id) {
  for (auto list : {view.running, view.waiting})
    for (const SequenceView& v : list)
      if (v.id == id) return &v;
  return nullptr;
}

bool is_waiting(const SchedulerView& view, RequestId id) {
  return std::any_of(view.waiting.begin(), view.waiting.end(),
                     [id](const SequenceView& v) { return v.id == id; });
}

}  // namespace

TEST_CASE("every batching policy returns valid plans and progresses on random views", "[batching]") {
  std::mt19937 rng(20240611);
  int progressed = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    const RandomView r = random_view(rng);
    const SchedulerView view = r.view();
    auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    const int stall_budget = uni(1, 700), packed_budget = uni(1, 700), grouped_budget = uni(1, 700);
    const StallFreeBatching stall_free(stall_budget, uni(0, 3));
    const PackedPrefillBatching packed(packed_budget);
    const PrefixGroupedBatching grouped(grouped_budget, uni(1, 64));
    const StepPlan plans[] = {PrefillFirstBatching{}.plan(view), stall_free.plan(view),
                              StallFreeBatching{}.plan(view), packed.plan(view), grouped.plan(view)};
    const char* names[] = {"prefill-first", "stall-free", "stall-free default", "packed", "prefix-grouped"};
    const bool progress = must_progress(view);
    progressed += progress ? 1 : 0;
    for (int p = 0; p < 5; ++p) {
      const StepPlan& plan = plans[p];
      INFO("iteration " << iter << ", " << names[p] << ": " << show(plan));
      CHECK(plan_error(plan, view).empty());
      if (progress) CHECK_FALSE(plan.empty());
    }
    // Same view, same plan: the policies are pure.
    CHECK(show(stall_free.plan(view)) == show(plans[1]));
    CHECK(show(grouped.plan(view)) == show(plans[4]));
    INFO("iteration " << iter);
    CHECK(decodes_first_holds(plans[1], view, stall_budget));
    CHECK(decodes_first_holds(plans[2], view, 512));
    CHECK(decodes_first_holds(plans[3], view, packed_budget));
    CHECK(decodes_first_holds(plans[4], view, grouped_budget));
    // Prefill-first: a step admits new prompts or decodes, never both.
    bool admits = false, decodes = false;
    for (const ScheduledChunk& c : plans[0].chunks) {
      admits = admits || is_waiting(view, c.id);
      decodes = decodes || (!is_waiting(view, c.id) && find(view, c.id)->is_decode());
    }
    CHECK_FALSE((admits && decodes));
    // Stall-free: a chunk that leaves its prompt unfinished ends on a block boundary when one is in reach.
    const int bs = view.budgets.block_size;
    for (int p : {1, 2})
      for (const ScheduledChunk& c : plans[p].chunks) {
        const SequenceView& s = *find(view, c.id);
        if (c.num_tokens < s.uncomputed()) {
          const bool aligned = (s.computed + c.num_tokens) % bs == 0;
          const bool no_boundary = (s.computed + c.num_tokens) / bs == s.computed / bs;
          CHECK((aligned || no_boundary));
        }
      }
    // Packed: a new prompt is cut only when it is the step's only prefill.
    int prefills = 0, cut = 0;
    for (const ScheduledChunk& c : plans[3].chunks) {
      const SequenceView& s = *find(view, c.id);
      if (!is_waiting(view, c.id) && s.is_decode()) continue;
      ++prefills;
      if (is_waiting(view, c.id) && c.num_tokens < s.uncomputed()) ++cut;
    }
    CHECK((cut == 0 || prefills == 1));
  }
  CHECK(progressed > 1000);  // the generator does produce views where progress is owed
}
