// The batching policies' own cost: one plan() over a view of N running decodes and N/4 waiting
// prompts of 512-2,048 tokens (half of them in 8 shared-prefix groups), as the session builds it
// each step. Issue target: scheduling stays under 1% of a decode step.
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "chunkwise/policy/batching/packed_prefill_batching.hpp"
#include "chunkwise/policy/batching/prefill_first_batching.hpp"
#include "chunkwise/policy/batching/prefix_grouped_batching.hpp"
#include "chunkwise/policy/batching/stall_free_batching.hpp"

namespace {

using namespace chunkwise;

struct Views {
  std::vector<std::vector<TokenId>> tokens;
  std::vector<SequenceView> running, waiting;
};

Views make_views(int n) {
  Views v;
  std::mt19937 rng(7);
  const int waiting = n / 4;
  v.tokens.resize(static_cast<std::size_t>(n + waiting));
  for (int i = 0; i < n + waiting; ++i) {
    auto& t = v.tokens[static_cast<std::size_t>(i)];
    const int len = 512 + static_cast<int>(rng() % 1537);
    const bool grouped = i % 2 == 0;
    for (int k = 0; k < len; ++k)
      t.push_back(grouped && k < 400 ? static_cast<TokenId>(1000 * (i % 8) + k)
                                     : static_cast<TokenId>(rng() % 49152));
  }
  for (int i = 0; i < n + waiting; ++i) {
    const auto& t = v.tokens[static_cast<std::size_t>(i)];
    const int len = static_cast<int>(t.size());
    SequenceView s{static_cast<RequestId>(i + 1), len, len, 0, 0, 128, i % 3, static_cast<double>(i), t};
    if (i < n) {  // a decode: its prompt is computed, one generated token waits
      s.prompt_len = len - 10;
      s.generated = 10;
      s.computed = len - 1;
      v.running.push_back(s);
    } else {
      v.waiting.push_back(s);
    }
  }
  return v;
}

template <class Policy>
void BM_Plan(benchmark::State& state) {
  const Views v = make_views(static_cast<int>(state.range(0)));
  const SchedulerView view{v.running, v.waiting, Budgets{4096, 2048, 100000, 16, 200000}};
  const Policy policy{};
  std::size_t chunks = 0;
  for (auto _ : state) {
    const StepPlan plan = policy.plan(view);
    chunks = plan.chunks.size();
    benchmark::DoNotOptimize(plan.chunks.data());
  }
  state.counters["running"] = static_cast<double>(v.running.size());
  state.counters["waiting"] = static_cast<double>(v.waiting.size());
  state.counters["chunks"] = static_cast<double>(chunks);
}

BENCHMARK_TEMPLATE(BM_Plan, PrefillFirstBatching)->Arg(256)->Arg(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_Plan, StallFreeBatching)->Arg(256)->Arg(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_Plan, PrefixGroupedBatching)->Arg(256)->Arg(1000)->Unit(benchmark::kMicrosecond);
BENCHMARK_TEMPLATE(BM_Plan, PackedPrefillBatching)->Arg(256)->Arg(1000)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
