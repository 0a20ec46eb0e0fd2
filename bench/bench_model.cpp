// End-to-end CPU throughput of the default model: prefill of one prompt, and decode steps of a
// batch of sequences that already hold a context (the two numbers bench/results/cpu.md reports).
//   bench_model [--benchmark_filter=...]        (model: $CHUNKWISE_MODEL or the set-up cache)
#include <benchmark/benchmark.h>

#include <cstdio>
#include <numeric>

#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/model/model.hpp"

namespace {

std::shared_ptr<const chunkwise::Model> model() {
  static auto m = chunkwise::Model::load(chunkwise::default_model_path());
  return m;
}

// Token ids of ordinary text, repeated to the wanted length (speed does not depend on the ids).
std::vector<chunkwise::TokenId> tokens(int n) {
  static const auto base = model()->tokenizer().encode(
      "The lighthouse keeper climbed the spiral stairs every evening at dusk, trimmed the wick, polished "
      "the great lens and wrote the weather into the log book before the ships came past the reef. ");
  std::vector<chunkwise::TokenId> out;
  while (static_cast<int>(out.size()) < n) out.insert(out.end(), base.begin(), base.end());
  out.resize(static_cast<std::size_t>(n));
  return out;
}

// Appends one sequence of rows [begin, end) over contiguous pages starting at first_page.
void add_sequence(chunkwise::ForwardBatch& b, const std::vector<chunkwise::TokenId>& toks, int begin, int end,
                  int first_page, int block_size, bool want_logits) {
  if (b.query_start.empty()) b.query_start.push_back(0), b.page_start.push_back(0);
  const int pages = (end + block_size - 1) / block_size;
  for (int p = begin; p < end; ++p) {
    b.tokens.push_back(toks[static_cast<std::size_t>(p)]);
    b.positions.push_back(p);
    b.slots.push_back(static_cast<std::int64_t>(first_page) * block_size + p);
  }
  for (int p = 0; p < pages; ++p) b.pages.push_back(first_page + p);
  b.query_start.push_back(static_cast<std::int32_t>(b.tokens.size()));
  b.page_start.push_back(static_cast<std::int32_t>(b.pages.size()));
  b.kv_len.push_back(end);
  if (want_logits) b.logit_rows.push_back(b.query_start.back() - 1);
}

void BM_Prefill(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  constexpr int kBlock = 16;
  chunkwise::CpuBackend backend(model(), (n + kBlock - 1) / kBlock, kBlock);
  const auto toks = tokens(n);
  chunkwise::ForwardBatch b;
  add_sequence(b, toks, 0, n, 0, kBlock, true);
  std::vector<float> logits(static_cast<std::size_t>(model()->config().vocab));
  for (auto _ : state) backend.forward(b, logits);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Prefill)->Arg(128)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

// One decode step for `batch` sequences, each with `context` tokens already cached.
void BM_Decode(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const int context = static_cast<int>(state.range(1));
  constexpr int kBlock = 16;
  const int pages_per_seq = (context + 1 + kBlock - 1) / kBlock;
  chunkwise::CpuBackend backend(model(), batch * pages_per_seq, kBlock);
  const auto toks = tokens(context + 1);
  std::vector<float> logits(static_cast<std::size_t>(batch) *
                            static_cast<std::size_t>(model()->config().vocab));
  for (int s = 0; s < batch; ++s) {  // fill the caches
    chunkwise::ForwardBatch fill;
    add_sequence(fill, toks, 0, context, s * pages_per_seq, kBlock, false);
    backend.forward(fill, logits);
  }
  chunkwise::ForwardBatch step;
  for (int s = 0; s < batch; ++s)
    add_sequence(step, toks, context, context + 1, s * pages_per_seq, kBlock, true);
  for (auto _ : state) backend.forward(step, logits);
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Decode)
    ->Args({1, 512})
    ->Args({16, 512})
    ->Args({64, 512})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
