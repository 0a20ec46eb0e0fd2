// Chunk reuse through InferenceSession on a tiny random model (CPU backend): requests given in
// segments fill the chunk store, load chunk KV and run the selective forward; at ratio 1 the tokens
// are the full prefill's; loaded (approximate) KV never enters the prefix cache; a corrupt disk
// file is a logged miss and the chunk is computed normally; bad segments are typed errors.
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/backend/prompt_logits.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/policy/reuse/any_reuse_policy.hpp"
#include "chunkwise/policy/reuse/blend_reuse.hpp"
#include "chunkwise/policy/reuse/full_reuse.hpp"
#include "chunkwise/sched/engine.hpp"
#include "chunkwise/sched/inference_session.hpp"
#include "chunkwise/sched/reuse_logits.hpp"
#include "compare.hpp"
#include "error_code.hpp"
#include "random_model.hpp"
#include "temp_dir.hpp"

using namespace chunkwise;
using test::error_code;

namespace {

std::vector<TokenId> tokens(int n, int seed) {
  std::vector<TokenId> t;
  for (int i = 0; i < n; ++i) t.push_back(static_cast<TokenId>((seed * 7 + i * 13 + i * i) % 40));
  return t;
}

struct Rag {
  std::vector<TokenId> prefix = tokens(6, 1), a = tokens(26, 2), b = tokens(31, 3), question = tokens(5, 4);

  [[nodiscard]] Request request(bool with_b = true) const {
    Request r;
    r.label = "rag";
    r.max_new_tokens = 6;
    r.stop_at_eos = false;
    r.segments.push_back({SegmentKind::kPrefix, {}, prefix});
    r.segments.push_back({SegmentKind::kChunk, {}, a});
    if (with_b) r.segments.push_back({SegmentKind::kChunk, {}, b});
    r.segments.push_back({SegmentKind::kQuestion, {}, question});
    return r;
  }
  // The same prompt as plain tokens.
  [[nodiscard]] Request plain(bool with_b = true) const {
    Request r = request(with_b);
    r.segments.clear();
    r.prompt_tokens = prefix;
    r.prompt_tokens.insert(r.prompt_tokens.end(), a.begin(), a.end());
    if (with_b) r.prompt_tokens.insert(r.prompt_tokens.end(), b.begin(), b.end());
    r.prompt_tokens.insert(r.prompt_tokens.end(), question.begin(), question.end());
    return r;
  }
};

SessionConfig config(std::shared_ptr<ChunkStore> store) {
  SessionConfig c;
  c.block_size = 4;
  c.kv_blocks = 256;
  c.chunk_store = std::move(store);
  return c;
}

std::shared_ptr<ChunkStore> host_store(std::vector<std::string>* log = nullptr,
                                       const std::filesystem::path& dir = {}) {
  ChunkStore::Config c;
  c.model_id = "tiny";
  c.disk_dir = dir;
  if (log != nullptr) c.log = [log](std::string_view line) { log->emplace_back(line); };
  return std::make_shared<ChunkStore>(std::move(c));
}

template <class Session>
FinishedRequest run_one(Session& s, Request r) {
  s.submit(std::move(r));
  while (s.has_work()) {
    s.step();
    const std::string broken = s.kv_cache().check_invariants();
    INFO(broken);
    REQUIRE(broken.empty());
  }
  auto done = s.take_finished();
  REQUIRE(done.size() == 1);
  return done.front();
}

// Every loaded row recomputed: a full prefill through the reuse path.
BlendReuse exact_blend() {
  BlendReuse::Params p;
  p.ratio = 1.0;
  p.min_tokens = 0;
  return BlendReuse(p);
}

template <class Reuse>
using Session = InferenceSession<StallFreeBatching, LruEviction, DenseAttention, Reuse>;

const std::shared_ptr<const Model>& model() {
  static const auto m = [] {
    std::mt19937 rng(7);
    return test::tiny_model(rng, 4);
  }();
  return m;
}

}  // namespace

TEST_CASE("a segmented prompt without a store is a plain prefill", "[reuse][session]") {
  const Rag rag;
  InferenceSession<> plain(model(), config(nullptr));
  const FinishedRequest want = run_one(plain, rag.plain());
  Session<BlendReuse> s(model(), config(nullptr));
  const FinishedRequest got = run_one(s, rag.request());
  CHECK(got.output_tokens == want.output_tokens);
  CHECK(got.prompt_tokens == want.prompt_tokens);
  CHECK(s.metrics().reuse.requests == 0);
}

TEST_CASE("blend reuse at ratio 1 fills the store, loads the chunks and gives the full prefill's tokens",
          "[reuse][session]") {
  const Rag rag;
  InferenceSession<> plain(model(), config(nullptr));
  const FinishedRequest want = run_one(plain, rag.plain());

  auto store = host_store();
  Session<BlendReuse> s(model(), config(store), StallFreeBatching(), LruEviction(), DenseAttention(),
                        exact_blend());
  const FinishedRequest first = run_one(s, rag.request());
  CHECK(first.output_tokens == want.output_tokens);
  const ReuseStats& st = s.metrics().reuse;
  CHECK(st.requests == 1);
  CHECK(st.chunks_stored == 2);
  CHECK(st.chunks_loaded == 2);
  CHECK(st.tokens_loaded == 26 + 31);
  CHECK(st.tokens_recomputed == 26 + 31);  // ratio 1: every loaded row
  CHECK(first.prompt_tokens_reused == 0);
  CHECK(store->stats().host_entries == 2);

  // Warm: nothing is stored again.
  const FinishedRequest second = run_one(s, rag.request());
  CHECK(second.output_tokens == want.output_tokens);
  CHECK(s.metrics().reuse.chunks_stored == 2);
  CHECK(s.metrics().reuse.chunks_loaded == 4);
}

TEST_CASE("full reuse keeps the loaded rows and never lets them into the prefix cache", "[reuse][session]") {
  const Rag rag;
  InferenceSession<> plain(model(), config(nullptr));
  const FinishedRequest want = run_one(plain, rag.plain());

  auto store = host_store();
  Session<FullReuse> s(model(), config(store));
  const FinishedRequest reused = run_one(s, rag.request());
  CHECK(reused.prompt_tokens_reused == 26 + 31);  // no row of a loaded chunk recomputed past layer 0
  CHECK(reused.prompt_tokens_computed == 6 + 5);
  CHECK(s.metrics().reuse.tokens_recomputed == 0);
  CHECK(s.metrics().prompt_tokens_computed == 11);

  // The same tokens as a plain prompt: only the prefix's whole blocks are cached (the chunk KV was
  // loaded), so it is computed exactly and gives the full prefill's tokens.
  const FinishedRequest after = run_one(s, rag.plain());
  CHECK(after.prompt_tokens_cached == 4);  // the prefix's one whole block of 4 (6 tokens)
  CHECK(after.output_tokens == want.output_tokens);
}

TEST_CASE("a prompt whose cached prefix reaches into a chunk loads the rest of it", "[reuse][session]") {
  const Rag rag;
  InferenceSession<> plain(model(), config(nullptr));
  const FinishedRequest want = run_one(plain, rag.plain());

  auto store = host_store();
  Session<BlendReuse> s(model(), config(store), StallFreeBatching(), LruEviction(), DenseAttention(),
                        exact_blend());
  // A plain prompt sharing the prefix and the first 20 tokens of chunk a caches 6 whole blocks
  // (positions 0..23), so the segmented prompt starts inside chunk a (positions 6..31).
  Request warm = rag.plain();
  warm.prompt_tokens.resize(6 + 20);
  for (const TokenId t : tokens(7, 9)) warm.prompt_tokens.push_back(t);
  run_one(s, warm);
  const FinishedRequest got = run_one(s, rag.request());
  CHECK(got.prompt_tokens_cached == 24);
  CHECK(s.metrics().reuse.chunks_loaded == 2);
  CHECK(s.metrics().reuse.tokens_loaded == (32 - 24) + 31);
  CHECK(got.output_tokens == want.output_tokens);
}

TEST_CASE("a corrupt chunk file is a logged miss and the chunk is computed normally", "[reuse][session]") {
  const Rag rag;
  InferenceSession<> plain(model(), config(nullptr));
  const FinishedRequest want = run_one(plain, rag.plain(/*with_b=*/false));

  test::TempDir dir;
  {
    auto store = host_store(nullptr, dir.path());
    Session<FullReuse> s(model(), config(store));
    run_one(s, rag.request(/*with_b=*/false));
    store->flush();
  }
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) files.push_back(e.path());
  REQUIRE(files.size() == 1);
  {  // flip bytes in the compressed body
    std::fstream f(files.front(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(files.front()) - 8));
    const char junk[4] = {'\x55', '\x55', '\x55', '\x55'};
    f.write(junk, sizeof junk);
  }
  std::vector<std::string> log;
  auto store = host_store(&log, dir.path());
  SessionConfig cfg = config(store);
  cfg.fill_chunk_store = false;
  Session<FullReuse> s(model(), cfg);
  const FinishedRequest got = run_one(s, rag.request(/*with_b=*/false));
  CHECK(s.metrics().reuse.chunks_missed == 1);
  CHECK(s.metrics().reuse.chunks_loaded == 0);
  CHECK(store->stats().corrupt_files == 1);
  REQUIRE(log.size() == 1);
  CHECK(log.front().find(files.front().filename().string()) != std::string::npos);
  CHECK(got.prompt_tokens_reused == 0);
  CHECK(got.output_tokens == want.output_tokens);  // the full prefill's answer
}

TEST_CASE("bad segments are typed errors and leave the session unchanged", "[reuse][session]") {
  const Rag rag;
  Session<BlendReuse> s(model(), config(host_store()));
  Request both = rag.request();
  both.prompt_tokens = {1, 2};
  CHECK(error_code([&] { s.submit(both); }) == ErrorCode::kInvalidArgument);
  Request chat = rag.request();
  chat.chat = true;
  CHECK(error_code([&] { s.submit(chat); }) == ErrorCode::kInvalidArgument);
  Request empty = rag.request();
  empty.segments[1].tokens.clear();
  CHECK(error_code([&] { s.submit(empty); }) == ErrorCode::kInvalidArgument);  // no text, no tokens
  Request out_of_range = rag.request();
  out_of_range.segments[2].tokens.push_back(40);
  CHECK(error_code([&] { s.submit(out_of_range); }) == ErrorCode::kTokenOutOfRange);
  Request bad_kind = rag.request();
  bad_kind.segments[0].kind = static_cast<SegmentKind>(9);
  CHECK(error_code([&] { s.submit(bad_kind); }) == ErrorCode::kInvalidArgument);
  CHECK(!s.has_work());
  CHECK(s.metrics().requests_submitted == 0);
}

TEST_CASE("the engine runs a reuse policy by name with a store of its own", "[reuse][session]") {
  const Rag rag;
  EngineConfig c;
  c.session.block_size = 4;
  c.session.kv_blocks = 256;
  c.apply("reuse=blend recompute_ratio=1");
  Engine engine(model(), c);
  REQUIRE(engine.chunk_store() != nullptr);
  engine.submit(rag.request());
  while (engine.has_work()) engine.step();
  CHECK(engine.metrics().reuse.chunks_loaded == 2);
  CHECK(engine.chunk_store()->config().model_id == model_fingerprint(*model()));

  EngineConfig prefix = c;
  prefix.reuse = "prefix";
  prefix.recompute_ratio = -1;
  CHECK(Engine(model(), prefix).chunk_store() == nullptr);
  EngineConfig unknown = c;
  unknown.reuse = "magic";
  CHECK(error_code([&] { Engine(model(), unknown); }) == ErrorCode::kInvalidArgument);
  EngineConfig bad_ratio = c;
  bad_ratio.recompute_ratio = 1.5;
  CHECK(error_code([&] { Engine(model(), bad_ratio); }) == ErrorCode::kInvalidArgument);
  // The backend's chunk tier: a CPU backend has none, and the sizes are checked all the same.
  EngineConfig tier = c;
  tier.apply("chunk_device_mb=16 chunk_pinned_mb=64");
  CHECK(tier.session.chunk_device_mb == 16);
  CHECK(tier.session.chunk_pinned_mb == 64);
  Engine with_tier(model(), tier);
  with_tier.submit(rag.request());
  while (with_tier.has_work()) with_tier.step();
  CHECK(with_tier.metrics().reuse.chunks_loaded == 2);
  CHECK(with_tier.metrics().reuse.device_hits == 0);
  for (const char* field : {"chunk_device_mb", "chunk_pinned_mb"}) {
    CAPTURE(field);
    EngineConfig huge = c;
    huge.apply(std::string(field) + "=17000000");
    CHECK(error_code([&] { Engine(model(), huge); }) == ErrorCode::kInvalidArgument);
  }
}

TEST_CASE("reuse_logits follows the session's path: ratio 1 is the full prefill, full reuse is not",
          "[reuse][session]") {
  const Rag rag;
  auto store = host_store();
  {  // warm the store through a session
    Session<FullReuse> s(model(), config(store));
    run_one(s, rag.request());
  }
  REQUIRE(store->stats().host_entries == 2);
  const Request plain = rag.plain();
  PromptLayout layout;
  for (const RequestSegment& seg : rag.request().segments) layout.append(seg.kind, seg.tokens);
  const std::vector<TokenId> answer = {3, 17, 9};
  std::vector<TokenId> all = plain.prompt_tokens;
  all.insert(all.end(), answer.begin(), answer.end());
  const auto n = static_cast<int>(plain.prompt_tokens.size());
  // One forward of prompt and answer; reuse_logits runs two (matrix products may round differently).
  const std::vector<float> want = prompt_logits(model(), all, 4, nullptr, nullptr, 0, n - 1);

  AnyReusePolicy exact = make_reuse_policy("blend", 1.0);
  const ReuseLogits same = reuse_logits(model(), layout, exact, *store, answer, 4);
  CHECK(test::max_abs_diff(same.logits, want) < 1e-4);
  CHECK(same.stats.chunks_loaded == 2);
  CHECK(same.recomputed_rows == 26 + 31);

  AnyReusePolicy full = make_reuse_policy("full");
  const ReuseLogits approx = reuse_logits(model(), layout, full, *store, answer, 4);
  CHECK(approx.logits.size() == want.size());
  CHECK(test::max_abs_diff(approx.logits, want) > 1e-2);
  CHECK(approx.recomputed_rows == 0);

  AnyReusePolicy prefix = make_reuse_policy("prefix");
  CHECK(test::max_abs_diff(reuse_logits(model(), layout, prefix, *store, answer, 4).logits, want) < 1e-4);

  // Gradual filtering reaches the backend: at ratio 1 every stage keeps every row (the full
  // prefill), and more stages than the model has layers are refused there.
  AnyReusePolicy gradual = make_reuse_policy("blend-gradual", 1.0);
  CHECK(test::max_abs_diff(reuse_logits(model(), layout, gradual, *store, answer, 4).logits, want) < 1e-4);
  BlendReuse::Params deep;
  deep.gradual.assign(static_cast<std::size_t>(model()->config().n_layers), 1.0);
  AnyReusePolicy too_deep(BlendReuse(deep), "too-deep");
  CHECK(error_code([&] { (void)reuse_logits(model(), layout, too_deep, *store, answer, 4); }) ==
        ErrorCode::kInvalidArgument);
}

TEST_CASE("chunks are stored as prefilled after the chunk context", "[reuse][session]") {
  const Rag rag;
  auto store = host_store();
  SessionConfig cfg = config(store);
  cfg.chunk_context = {5, 6, 7};
  Session<BlendReuse> s(model(), cfg, StallFreeBatching(), LruEviction(), DenseAttention(), exact_blend());
  run_one(s, rag.request(/*with_b=*/false));
  const auto kv = store->get(store->key_for(rag.a), rag.a);
  REQUIRE(kv != nullptr);
  CHECK(kv->position0 == 3);
  // The KV of a's rows as a prefill of [5 6 7 a...] computes them.
  std::vector<TokenId> context_then_a = {5, 6, 7};
  context_then_a.insert(context_then_a.end(), rag.a.begin(), rag.a.end());
  CpuBackend cpu(model(), 16, 4);
  ForwardBatch b;
  b.tokens = context_then_a;
  for (int p = 0; p < static_cast<int>(context_then_a.size()); ++p) {
    b.positions.push_back(p);
    b.slots.push_back(p);
  }
  b.query_start = {0, static_cast<std::int32_t>(context_then_a.size())};
  b.pages = {0, 1, 2, 3, 4, 5, 6, 7};
  b.page_start = {0, 8};
  b.kv_len = {static_cast<std::int32_t>(context_then_a.size())};
  cpu.forward(b, {});
  std::vector<std::int64_t> slots(rag.a.size());
  std::iota(slots.begin(), slots.end(), 3);
  const ChunkKv want = cpu.read_chunk_kv(rag.a, 3, slots);
  CHECK(kv->data == want.data);
}

TEST_CASE("the loading controller computes the chunks that are slower to load than to prefill",
          "[reuse][session]") {
  const Rag rag;
  InferenceSession<> plain(model(), config(nullptr));
  const FinishedRequest want = run_one(plain, rag.plain());
  // A clock that stands still: every measured cost is 0, which only pulls the priors toward 0 by
  // a quarter per observation, so the priors decide.
  auto run = [&](LoadCosts prior) {
    SessionConfig c = config(host_store());
    c.clock = [] { return 0.0; };
    c.reuse_load_control = true;
    c.reuse_load_costs = prior;
    auto s = std::make_unique<Session<FullReuse>>(model(), c);
    const FinishedRequest got = run_one(*s, rag.request());
    return std::pair(got, s->metrics().reuse);
  };
  // Loading a chunk's fp32 KV (tens of KB here) at a second a byte: both chunks computed, and the
  // prompt is a plain prefill.
  const auto [slow, slow_stats] = run({.prefill_s_per_row = 1e-3, .host_s_per_byte = 1.0});
  CHECK(slow_stats.chunks_stored == 2);
  CHECK(slow_stats.chunks_computed == 2);
  CHECK(slow_stats.chunks_loaded == 0);
  CHECK(slow.output_tokens == want.output_tokens);
  CHECK(slow.prompt_tokens_reused == 0);
  // Loading far cheaper than prefilling: both loaded, as without the controller.
  const auto [fast, fast_stats] = run({.prefill_s_per_row = 1.0, .host_s_per_byte = 1e-12});
  CHECK(fast_stats.chunks_computed == 0);
  CHECK(fast_stats.chunks_loaded == 2);
  CHECK(fast.prompt_tokens_reused == 26 + 31);
  // Nothing measured yet: loaded (measuring the load); the load measured but not the prefill:
  // computed (measuring the prefill).
  CHECK(run({}).second.chunks_loaded == 2);
  CHECK(run({.host_s_per_byte = 1e-12}).second.chunks_computed == 2);
}
