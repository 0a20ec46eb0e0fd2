// Bookkeeping cost of the KV memory layer (KvCache<LruEviction>) at production sizes, with a no-op
// KvTransfer so that only the cache's own work is timed: prefix lookups and inserts against an
// index of a million blocks, eviction, and the per-step reserve/commit of a decoding batch (the
// issue's budget: under 20 us per step at 256 sequences). Block size 16 throughout.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "chunkwise/kv/kv_cache.hpp"
#include "chunkwise/policy/eviction/lru_eviction.hpp"

namespace {

using chunkwise::BlockId;
using chunkwise::KvCacheConfig;
using chunkwise::KvTransfer;
using chunkwise::LruEviction;
using chunkwise::TokenId;
using Cache = chunkwise::KvCache<LruEviction>;
using SeqId = Cache::SeqId;

constexpr int kBlockSize = 16;
constexpr int kPromptTokens = 2048;             // 128 blocks
constexpr int kSharedTokens = 512;              // a system prompt shared by many requests
constexpr int kSharedPrefixes = 64;             // distinct system prompts
constexpr int kTargetCachedBlocks = 1'000'000;  // the index the lookups run against
constexpr int kBatch = 1024;                    // blocks prepared per pause in the mutating benchmarks

std::size_t uz(int i) {
  return static_cast<std::size_t>(i);
}

// Copy, save and load must exist; with 0 bytes per block there is nothing to move.
KvTransfer noop_transfer() {
  KvTransfer t;
  t.bytes_per_block = 0;
  t.copy = [](BlockId, BlockId) {};
  t.save = [](BlockId, std::span<std::byte>) {};
  t.load = [](BlockId, std::span<const std::byte>) {};
  return t;
}

// Tokens nobody else uses: each call hands out a fresh range.
class TokenSource {
 public:
  std::vector<TokenId> take(int n) {
    std::vector<TokenId> t(uz(n));
    for (TokenId& x : t) x = next_++;
    return t;
  }

 private:
  TokenId next_ = 1;
};

// Opens, computes and closes a sequence so that its full blocks end up cached.
void cache_prompt(Cache& cache, SeqId id, const std::vector<TokenId>& tokens, double now) {
  cache.open(id, tokens, "", 0, now);
  const int m = cache.match(id, tokens, now);
  const int n = static_cast<int>(tokens.size());
  if (cache.reserve(id, m, n, now)) std::abort();  // sized so that this cannot happen
  cache.commit(id, tokens, n, now);
  cache.close(id, now);
}

// A million cached blocks: prompts of 2,048 tokens, each starting with one of 64 shared system
// prompts of 512 tokens followed by 1,536 tokens of its own. Built once, shared by the benchmarks
// below; those that mutate it leave it at about the same size.
struct World {
  World()
      : cache(KvCacheConfig{kTargetCachedBlocks + 64 * 1024, kBlockSize}, LruEviction{}, noop_transfer()) {
    for (int p = 0; p < kSharedPrefixes; ++p) shared.push_back(tokens.take(kSharedTokens));
    constexpr int own = (kPromptTokens - kSharedTokens) / kBlockSize;
    const int n = (kTargetCachedBlocks - kSharedPrefixes * kSharedTokens / kBlockSize + own - 1) / own;
    for (int i = 0; i < n; ++i) {
      auto prompt = shared[uz(i % kSharedPrefixes)];
      const auto rest = tokens.take(kPromptTokens - kSharedTokens);
      prompt.insert(prompt.end(), rest.begin(), rest.end());
      cache_prompt(cache, next_id++, prompt, now);
      now += 1e-3;
      if (i == n / 2) probe = prompt;  // a prompt whose every full block is cached
    }
  }

  Cache cache;
  TokenSource tokens;
  std::vector<std::vector<TokenId>> shared;
  std::vector<TokenId> probe;
  SeqId next_id = 1;
  double now = 0;
};

World& world() {
  static World* w = new World();  // never destroyed: teardown of a million entries is not measured
  return *w;
}

void report_index(benchmark::State& state, const Cache& cache) {
  state.counters["cached_blocks"] = static_cast<double>(cache.usage().cached);
  state.counters["indexed"] = static_cast<double>(cache.index().size());
}

enum class Lookup { kPeek, kMatchRelease, kOpenPeekClose };

// One admission lookup of a 2,048-token prompt whose 127 lookup-able blocks are all cached.
//  peek:            the lookup alone (chain hashes already computed);
//  match_release:   take the blocks and give them back (refcounts, policy events);
//  open_peek_close: a new request: hashes its 128 blocks, counts their demand, looks up, leaves.
void BM_PrefixLookup(benchmark::State& state, Lookup mode) {
  World& w = world();
  Cache& cache = w.cache;
  const SeqId id = w.next_id++;
  if (mode != Lookup::kOpenPeekClose) cache.open(id, w.probe, "", 0, w.now);
  int hit = 0;
  for (auto _ : state) {
    switch (mode) {
      case Lookup::kPeek:
        hit = cache.peek(id, w.probe);
        break;
      case Lookup::kMatchRelease:
        hit = cache.match(id, w.probe, w.now);
        cache.release(id, w.now);
        break;
      case Lookup::kOpenPeekClose:
        cache.open(id, w.probe, "", 0, w.now);
        hit = cache.peek(id, w.probe);
        cache.close(id, w.now);
        break;
    }
    benchmark::DoNotOptimize(hit);
  }
  if (mode != Lookup::kOpenPeekClose) cache.close(id, w.now);
  if (hit != kPromptTokens - kBlockSize) state.SkipWithError("the probe prompt did not hit");
  state.SetItemsProcessed(state.iterations());
  state.counters["hit_tokens"] = hit;
  state.counters["time_per_block"] =
      benchmark::Counter(static_cast<double>(hit / kBlockSize) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  report_index(state, cache);
}
BENCHMARK_CAPTURE(BM_PrefixLookup, peek, Lookup::kPeek)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PrefixLookup, match_release, Lookup::kMatchRelease)->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PrefixLookup, open_peek_close, Lookup::kOpenPeekClose)->Unit(benchmark::kMicrosecond);

// One commit that indexes one newly filled block, into an index of about a million blocks. A
// writer sequence gets kBatch blocks reserved while timing is paused; every 4 batches it is
// closed and the same number of old blocks evicted, so the index stays at its size.
void BM_Insert(benchmark::State& state) {
  World& w = world();
  Cache& cache = w.cache;
  constexpr int kWriterBlocks = 4 * kBatch;
  SeqId id = 0;
  std::vector<TokenId> tokens;
  int filled = 0;    // full blocks committed
  int reserved = 0;  // blocks in the table
  const auto start_writer = [&] {
    if (id != 0) {
      cache.close(id, w.now);
      cache.evict(filled, w.now);
    }
    id = w.next_id++;
    tokens = w.tokens.take(kWriterBlocks * kBlockSize);
    cache.open(id, std::span(tokens).first(0), "", 0, w.now);  // no prompt: no demand
    filled = 0;
    reserved = 0;
  };
  start_writer();
  for (auto _ : state) {
    if (filled == reserved) {
      state.PauseTiming();
      if (reserved == kWriterBlocks) start_writer();
      if (cache.reserve(id, reserved * kBlockSize, (reserved + kBatch) * kBlockSize, w.now)) std::abort();
      reserved += kBatch;
      state.ResumeTiming();
    }
    ++filled;
    cache.commit(id, tokens, filled * kBlockSize, w.now);
  }
  cache.close(id, w.now);  // the timed loop is over: restore the index size untimed
  cache.evict(filled, w.now);
  state.SetItemsProcessed(state.iterations());
  report_index(state, cache);
}
BENCHMARK(BM_Insert)->Unit(benchmark::kNanosecond);

// One eviction (policy pick, index removal, parent re-ranked) from about a million cached blocks.
// Every kBatch evictions, a chain of kBatch fresh blocks is cached while timing is paused.
void BM_Evict(benchmark::State& state) {
  World& w = world();
  Cache& cache = w.cache;
  int left = 0;
  for (auto _ : state) {
    if (left == 0) {
      state.PauseTiming();
      cache_prompt(cache, w.next_id++, w.tokens.take(kBatch * kBlockSize + 1), w.now);
      left = kBatch;
      state.ResumeTiming();
    }
    w.now += 1e-6;
    if (cache.evict(1, w.now) != 1) state.SkipWithError("nothing to evict");
    --left;
  }
  state.SetItemsProcessed(state.iterations());
  report_index(state, cache);
}
BENCHMARK(BM_Evict)->Unit(benchmark::kNanosecond);

// A decoding batch of N sequences: per step every sequence appends one token, reserves room for
// it and commits (a block fills every 16 steps and enters the index). Sequences start at
// staggered lengths between 512 and 2,048 tokens; one that reaches 2,048 is closed and replaced
// by a new 512-token request with timing paused. Memory is sized for the batch plus a cache of
// closed requests, so filling blocks also evicts once the pool is full, as in a server.
void BM_StepBookkeeping(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  constexpr int kStart = 512;
  constexpr int kEnd = 2048;
  Cache cache(KvCacheConfig{n * (kEnd / kBlockSize) * 5 / 4, kBlockSize}, LruEviction{}, noop_transfer());
  TokenSource source;
  struct Running {
    SeqId id = 0;
    std::vector<TokenId> tokens;
  };
  std::vector<Running> batch(uz(n));
  SeqId next_id = 1;
  double now = 0;
  const auto admit = [&](Running& r, int length) {
    r.id = next_id++;
    r.tokens = source.take(length);
    r.tokens.reserve(uz(kEnd));
    cache.open(r.id, r.tokens, "", 0, now);
    const int m = cache.match(r.id, r.tokens, now);
    if (cache.reserve(r.id, m, length, now)) std::abort();
    cache.commit(r.id, r.tokens, length, now);
  };
  for (int i = 0; i < n; ++i) admit(batch[uz(i)], kStart + (kEnd - kStart) * i / n);
  TokenId next_token = 1 << 30;
  for (auto _ : state) {
    now += 0.02;
    for (Running& r : batch) {
      const int computed = static_cast<int>(r.tokens.size());
      if (computed == kEnd) {
        state.PauseTiming();
        cache.close(r.id, now);
        admit(r, kStart);
        state.ResumeTiming();
        continue;
      }
      r.tokens.push_back(next_token++);
      if (cache.reserve(r.id, computed, computed + 1, now)) {
        state.SkipWithError("out of KV memory");
        break;
      }
      cache.commit(r.id, r.tokens, computed + 1, now);
    }
  }
  state.SetItemsProcessed(state.iterations() * n);  // sequence-steps
  state.counters["seqs"] = n;
  state.counters["evictions"] = static_cast<double>(cache.metrics().evictions);
}
BENCHMARK(BM_StepBookkeeping)->Arg(256)->Arg(1000)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
