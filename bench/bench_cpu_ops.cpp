// Micro-benchmarks of the CPU reference ops at the shapes of the default model, SmolLM2-135M:
// hidden 576, 9 query heads and 3 KV heads of dimension 64, MLP 1536, vocabulary 49152.
// Times are wall clock (the ops run on an OpenMP team); FLOP/s counts multiply-adds as 2 FLOPs.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/sampling.hpp"
#include "chunkwise/policy/sparse/streaming_attention.hpp"

namespace {

namespace cpu = chunkwise::cpu;

constexpr int kHidden = 576;
constexpr int kHeads = 9;
constexpr int kKvHeads = 3;
constexpr int kHeadDim = 64;
constexpr int kFfn = 1536;
constexpr int kVocab = 49152;
constexpr int kBlockSize = 16;

std::vector<float> random_vector(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void set_rate(benchmark::State& state, const char* name, double per_iteration) {
  state.counters[name] = benchmark::Counter(per_iteration * static_cast<double>(state.iterations()),
                                            benchmark::Counter::kIsRate);
}

// Args: threads, m (tokens), k (in features), n (out features).
void BM_MatmulNT(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(0)));
  const std::int64_t m = state.range(1), k = state.range(2), n = state.range(3);
  const auto x = random_vector(static_cast<std::size_t>(m * k), 1);
  const auto w = random_vector(static_cast<std::size_t>(n * k), 2);
  std::vector<float> y(static_cast<std::size_t>(m * n));
  for (auto _ : state) {
    cpu::matmul_nt(x.data(), m, k, w.data(), n, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, "FLOP/s", 2.0 * static_cast<double>(m * n * k));
  set_rate(state, "W_bytes/s", 4.0 * static_cast<double>(n * k));
}

void matmul_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"threads", "m", "k", "n"});
  // (k, n) of q/o, k/v, gate/up, down and the LM head.
  const std::vector<std::pair<int, int>> layers = {{kHidden, kHidden},
                                                   {kHidden, kKvHeads * kHeadDim},
                                                   {kHidden, kFfn},
                                                   {kFfn, kHidden},
                                                   {kHidden, kVocab}};
  for (const int threads : {1, 2}) {
    for (const int m : {1, 16, 128, 512}) {
      for (const auto& [k, n] : layers) b->Args({threads, m, k, n});
    }
  }
}
BENCHMARK(BM_MatmulNT)->Apply(matmul_args)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Args: threads, rows.
void BM_RmsNorm(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(0)));
  const std::int64_t rows = state.range(1);
  const auto x = random_vector(static_cast<std::size_t>(rows * kHidden), 3);
  const auto w = random_vector(kHidden, 4);
  std::vector<float> y(x.size());
  for (auto _ : state) {
    cpu::rms_norm(x.data(), w.data(), rows, kHidden, 1e-5f, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, "elem/s", static_cast<double>(rows * kHidden));
}
BENCHMARK(BM_RmsNorm)
    ->ArgNames({"threads", "rows"})
    ->ArgsProduct({{1, 2}, {1, 128, 512}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Args: threads, rows. RoPE on the query projection (9 heads x 64).
void BM_Rope(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(0)));
  const std::int64_t rows = state.range(1);
  auto x = random_vector(static_cast<std::size_t>(rows * kHeads * kHeadDim), 5);
  std::vector<std::int32_t> pos(static_cast<std::size_t>(rows));
  std::iota(pos.begin(), pos.end(), 0);
  const auto inv_freq = cpu::rope_inv_freq(kHeadDim, 100000.0f, {});
  for (auto _ : state) {
    cpu::rope(x.data(), rows, kHeads, kHeadDim, pos.data(), inv_freq);
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, "elem/s", static_cast<double>(rows * kHeads * kHeadDim));
}
BENCHMARK(BM_Rope)
    ->ArgNames({"threads", "rows"})
    ->ArgsProduct({{1, 2}, {1, 128, 512}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// A paged cache holding n_seq sequences of kv_len tokens in shuffled pages, with query rows for the
// last `rows` positions of each sequence.
struct AttentionSetup {
  std::vector<float> k, v, q, out;
  std::vector<std::int32_t> query_start{0}, page_start{0}, pages, kv_len, q_pos;
  cpu::PagedKv cache;
  double flops = 0.0;  // causal QK^T and PV multiply-adds, x2

  AttentionSetup(int n_seq, int len, int rows) {
    const int pages_per_seq = (len + kBlockSize - 1) / kBlockSize;
    const int n_pages = n_seq * pages_per_seq;
    const std::size_t pool = static_cast<std::size_t>(n_pages) * kBlockSize * kKvHeads * kHeadDim;
    k = random_vector(pool, 6);
    v = random_vector(pool, 7);
    cache = {k.data(), v.data(), kBlockSize, kKvHeads, kHeadDim};
    std::vector<std::int32_t> order(static_cast<std::size_t>(n_pages));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), std::mt19937(8));
    for (int s = 0; s < n_seq; ++s) {
      pages.insert(pages.end(), order.begin() + s * pages_per_seq, order.begin() + (s + 1) * pages_per_seq);
      page_start.push_back(static_cast<std::int32_t>(pages.size()));
      kv_len.push_back(len);
      for (int p = len - rows; p < len; ++p) {
        q_pos.push_back(p);
        flops += 4.0 * kHeads * kHeadDim * (p + 1);
      }
      query_start.push_back(static_cast<std::int32_t>(q_pos.size()));
    }
    q = random_vector(q_pos.size() * kHeads * kHeadDim, 9);
    out.resize(q.size());
  }
  [[nodiscard]] cpu::AttentionBatch batch() const { return {query_start, page_start, pages, kv_len, q_pos}; }
};

void run_attention(benchmark::State& state, int n_seq, int len, int rows) {
  cpu::set_num_threads(static_cast<int>(state.range(0)));
  AttentionSetup a(n_seq, len, rows);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  for (auto _ : state) {
    cpu::paged_attention(a.q.data(), a.cache, a.batch(), kHeads, scale, a.out.data());
    benchmark::DoNotOptimize(a.out.data());
    benchmark::ClobberMemory();
  }
  set_rate(state, "FLOP/s", a.flops);
  // K and V bytes each sequence's rows must read at least once.
  set_rate(state, "KV_bytes/s", 2.0 * 4.0 * n_seq * len * kKvHeads * kHeadDim);
}

// Args: threads, prompt tokens. Whole-prompt prefill from position 0.
void BM_AttentionPrefill(benchmark::State& state) {
  const int len = static_cast<int>(state.range(1));
  run_attention(state, 1, len, len);
}
BENCHMARK(BM_AttentionPrefill)
    ->ArgNames({"threads", "tokens"})
    ->ArgsProduct({{1, 2}, {512, 1024}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Args: threads. A 512-token prefill chunk over a 512-token cached prefix.
void BM_AttentionChunkedPrefill(benchmark::State& state) {
  run_attention(state, 1, 1024, 512);
}
BENCHMARK(BM_AttentionChunkedPrefill)
    ->ArgNames({"threads"})
    ->DenseRange(1, 2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Args: threads, batch. One decode row per sequence, each with 1024 tokens of context.
void BM_AttentionDecode(benchmark::State& state) {
  run_attention(state, static_cast<int>(state.range(1)), 1024, 1);
}
BENCHMARK(BM_AttentionDecode)
    ->ArgNames({"threads", "batch"})
    ->ArgsProduct({{1, 2}, {1, 16}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Args: threads, window tokens. An 8K-token whole-prompt prefill through the block-sparse op with a
// sink (64 tokens) + window mask (StreamingAttention, 64-token tiles): the op's time against its
// density (the "density" counter; BM_AttentionPrefill is the dense op).
void BM_SparsePrefill(benchmark::State& state) {
  cpu::set_num_threads(static_cast<int>(state.range(0)));
  constexpr int kLen = 8192;
  AttentionSetup a(1, kLen, kLen);
  chunkwise::StreamingAttentionParams p;
  p.sink = 64;
  p.window = static_cast<int>(state.range(1));
  p.fallback.min_kv_len = 0;
  chunkwise::AttentionProbe probe;
  probe.n_heads = kHeads;
  probe.n_kv_heads = kKvHeads;
  probe.head_dim = kHeadDim;
  probe.query_len = kLen;
  probe.kv_len = kLen;
  const chunkwise::BlockMask mask = chunkwise::StreamingAttention(p).select(probe);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  for (auto _ : state) {
    cpu::sparse_attention(a.q.data(), a.cache, a.pages, 0, kLen, mask, kHeads, scale, a.out.data());
    benchmark::DoNotOptimize(a.out.data());
    benchmark::ClobberMemory();
  }
  state.counters["density"] = chunkwise::mask_cost(mask).density();
}
BENCHMARK(BM_SparsePrefill)
    ->ArgNames({"threads", "window"})
    ->ArgsProduct({{2}, {512, 1024, 2048, 8192}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// Dense op at the same 8K prompt, for BM_SparsePrefill.
void BM_DensePrefill8K(benchmark::State& state) {
  run_attention(state, 1, 8192, 8192);
}
BENCHMARK(BM_DensePrefill8K)->ArgNames({"threads"})->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// Args: temperature x 100, top_k, top_p x 100. One draw from a vocabulary of 49152 (normal logits).
void BM_Sample(benchmark::State& state) {
  std::mt19937 rng(10);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> logits(kVocab);
  for (float& l : logits) l = dist(rng);
  const chunkwise::SamplingParams params{static_cast<float>(state.range(0)) / 100.0f,
                                         static_cast<int>(state.range(1)),
                                         static_cast<float>(state.range(2)) / 100.0f, 1};
  std::uint64_t step = 0;
  for (auto _ : state) benchmark::DoNotOptimize(chunkwise::sample(logits.data(), kVocab, params, step++));
}
BENCHMARK(BM_Sample)
    ->ArgNames({"temp_x100", "top_k", "top_p_x100"})
    ->Args({0, 0, 100})
    ->Args({70, 0, 100})
    ->Args({70, 40, 100})
    ->Args({70, 0, 90})
    ->Args({70, 40, 95})
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
