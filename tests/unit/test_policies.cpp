// Stock policies, tested on views alone (no model).
#include "catch.hpp"
#include "chunkwise/policy/batching/continuous_batching.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/reuse/prefix_only_reuse.hpp"
#include "chunkwise/policy/sparse/dense_attention.hpp"

using namespace chunkwise;

static_assert(BatchingPolicy<ContinuousBatching>);
static_assert(SparsePolicy<DenseAttention>);
static_assert(ReusePolicy<PrefixOnlyReuse>);

namespace {
SequenceView decode(RequestId id, int len) {
  return {id, len - 1, len, len - 1, 1, 16, 0, 0.0, {}};
}
SequenceView fresh(RequestId id, int prompt) {
  return {id, prompt, prompt, 0, 0, 16, 0, 0.0, {}};
}
}  // namespace

TEST_CASE("continuous batching runs every decode, then whole prompts first-come first-served", "[policy]") {
  const std::vector<SequenceView> running = {decode(1, 20), decode(2, 33)};
  const std::vector<SequenceView> waiting = {fresh(3, 10), fresh(4, 50), fresh(5, 5)};
  const SchedulerView view{running, waiting, Budgets{60, 8, 100, 16, 1000}};
  const StepPlan plan = ContinuousBatching{}.plan(view);
  REQUIRE(plan.chunks.size() == 4);
  CHECK(plan.chunks[0].id == 1);
  CHECK(plan.chunks[0].num_tokens == 1);
  CHECK(plan.chunks[1].id == 2);
  CHECK(plan.chunks[2].id == 3);
  CHECK(plan.chunks[2].num_tokens == 10);
  CHECK(plan.chunks[3].id == 4);
  CHECK(plan.chunks[3].num_tokens == 48);  // the rest of the token budget: 60 - 2 - 10; request 5 waits
}

TEST_CASE("continuous batching respects memory and sequence budgets", "[policy]") {
  const std::vector<SequenceView> waiting = {fresh(1, 40), fresh(2, 40)};
  SECTION("a prompt is cut to the blocks that are free") {
    const SchedulerView view{{}, waiting, Budgets{512, 8, 2, 16, 1000}};
    const StepPlan plan = ContinuousBatching{}.plan(view);
    REQUIRE(plan.chunks.size() == 1);
    CHECK(plan.chunks[0].num_tokens <= 32);
    CHECK(view.blocks_needed(waiting[0], plan.chunks[0].num_tokens) <= 2);
  }
  SECTION("no memory, no prefill") {
    const SchedulerView view{{}, waiting, Budgets{512, 8, 0, 16, 1000}};
    CHECK(ContinuousBatching{}.plan(view).empty());
  }
  SECTION("sequence cap") {
    const SchedulerView view{{}, waiting, Budgets{512, 1, 100, 16, 1000}};
    CHECK(ContinuousBatching{}.plan(view).chunks.size() == 1);
  }
}

TEST_CASE("continuous batching keeps a block per running sequence when admitting", "[policy]") {
  const std::vector<SequenceView> running = {decode(1, 33), decode(2, 49)};  // each needs a new block
  const std::vector<SequenceView> waiting = {fresh(3, 64)};
  const SchedulerView view{running, waiting, Budgets{512, 8, 6, 16, 1000}};
  const StepPlan plan = ContinuousBatching{}.plan(view);
  REQUIRE(plan.chunks.size() == 3);
  // The decodes take 2 of 6 free blocks; 2 more stay in reserve for the two running sequences.
  CHECK(plan.chunks[2].num_tokens == 32);
}

TEST_CASE("blocks_needed counts only blocks beyond those already held", "[policy]") {
  const SchedulerView view{{}, {}, Budgets{64, 8, 10, 16, 1000}};
  SequenceView s = fresh(1, 40);
  CHECK(view.blocks_needed(s, 16) == 1);
  CHECK(view.blocks_needed(s, 17) == 2);
  s.computed = 16;  // one full block held
  CHECK(view.blocks_needed(s, 1) == 1);
  s.computed = 17;  // two blocks held, second partial
  CHECK(view.blocks_needed(s, 15) == 0);
  CHECK(view.blocks_needed(s, 16) == 1);
}

TEST_CASE("dense attention selects every causal block", "[policy]") {
  AttentionProbe probe;
  probe.block_size = 64;
  const BlockMask mask = DenseAttention{}.select(probe);
  CHECK(mask.dense);
  CHECK(mask.block_size == 64);
}
