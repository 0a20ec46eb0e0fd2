// Stock sparse and reuse policies and the scheduler view, tested without a model (batching:
// test_batching_policies.cpp, eviction: test_eviction_policies.cpp, reuse plans:
// test_reuse_policies.cpp).
#include "catch.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/reuse/prefix_only_reuse.hpp"
#include "chunkwise/policy/sparse/dense_attention.hpp"

using namespace chunkwise;

static_assert(SparsePolicy<DenseAttention>);
static_assert(ReusePolicy<PrefixOnlyReuse>);

namespace {
SequenceView fresh(RequestId id, int prompt) {
  return {id, prompt, prompt, 0, 0, 16, 0, 0.0, {}};
}
}  // namespace

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

TEST_CASE("dense attention returns the index-free dense mask", "[policy]") {
  AttentionProbe probe;
  probe.n_heads = 4;
  probe.query_begin = 100;
  probe.query_len = 200;
  probe.kv_len = 300;
  const BlockMask mask = DenseAttention{}.select(probe);
  CHECK(mask.dense);
  CHECK(mask.tile == 64);
  CHECK(mask.first_qtile == 1);
  CHECK(mask.n_qtiles == 4);
  CHECK(mask.col_index.empty());
}
