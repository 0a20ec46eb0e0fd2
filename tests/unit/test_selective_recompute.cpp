// Chunk reuse on the CPU backend without a model file: the recompute quotas and row choice, the
// SelectiveRecompute contract, key re-rotation, chunk KV in and out of the cache, and a selective
// forward on a tiny random model (ratio 1 is a full prefill, bit for bit; at lower ratios the cache
// holds fresh KV where it should and loaded KV elsewhere).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/chunk_kv.hpp"
#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"
#include "error_code.hpp"
#include "random_model.hpp"

using namespace chunkwise;
using test::error_code;

namespace {

constexpr int kBlock = 16;

// A prefill of tokens at positions first.. of one sequence whose cache uses pages 0, 1, ... in
// order (slot == position), with the last row's logits.
ForwardBatch prefill(std::span<const TokenId> tokens, std::int32_t first) {
  ForwardBatch b;
  b.tokens.assign(tokens.begin(), tokens.end());
  const auto n = static_cast<std::int32_t>(tokens.size());
  for (std::int32_t i = 0; i < n; ++i) {
    b.positions.push_back(first + i);
    b.slots.push_back(first + i);
  }
  const std::int32_t kv_len = first + n;
  const int pages = (kv_len + kBlock - 1) / kBlock;
  for (int p = 0; p < pages; ++p) b.pages.push_back(p);
  b.query_start = {0, n};
  b.page_start = {0, pages};
  b.kv_len = {kv_len};
  b.logit_rows = {n - 1};
  return b;
}

std::vector<std::int64_t> slots_of(std::int32_t first, std::int32_t n) {
  std::vector<std::int64_t> s;
  for (std::int32_t i = 0; i < n; ++i) s.push_back(first + i);
  return s;
}

// The prompt [system 0..8)[chunk 8..40)[chunk 40..72)[question 72..80) of the tiny model.
struct Prompt {
  std::vector<TokenId> tokens;
  static constexpr std::int32_t kSystem = 8, kChunk = 32, kQuestion = 8;
  static constexpr std::int32_t kRows = kSystem + 2 * kChunk + kQuestion;
  [[nodiscard]] std::span<const TokenId> chunk(int i) const {
    return std::span(tokens).subspan(static_cast<std::size_t>(kSystem + i * kChunk), kChunk);
  }
};

Prompt random_prompt(std::mt19937& rng) {
  std::uniform_int_distribution<int> token(0, 39);
  Prompt p;
  for (int i = 0; i < Prompt::kRows; ++i) p.tokens.push_back(token(rng));
  return p;
}

SelectiveRecompute recompute_for(double ratio, std::int32_t min_tokens = 0) {
  SelectiveRecompute r;
  r.min_tokens = min_tokens;
  r.always = {{0, Prompt::kSystem}, {Prompt::kRows - Prompt::kQuestion, Prompt::kRows}};
  for (int i = 0; i < 2; ++i)
    r.chunks.push_back(
        {Prompt::kSystem + i * Prompt::kChunk, Prompt::kSystem + (i + 1) * Prompt::kChunk, ratio});
  return r;
}

// A backend whose cache holds the prompt's chunks computed standalone (each alone at positions
// 0..31 on another backend, then moved to its place in the prompt).
std::unique_ptr<CpuBackend> with_chunks_loaded(const std::shared_ptr<const Model>& model, const Prompt& p) {
  auto target = std::make_unique<CpuBackend>(model, 8, kBlock);
  std::vector<float> logits(static_cast<std::size_t>(model->config().vocab));
  for (int i = 0; i < 2; ++i) {
    CpuBackend alone(model, 8, kBlock);
    alone.forward(prefill(p.chunk(i), 0), logits);
    const ChunkKv kv = alone.read_chunk_kv(p.chunk(i), 0, slots_of(0, Prompt::kChunk));
    const std::int32_t at = Prompt::kSystem + i * Prompt::kChunk;
    target->write_chunk_kv(kv, at, slots_of(at, Prompt::kChunk));
  }
  return target;
}

// A 4-layer tiny model, a random prompt, its plain prefill batch and that batch's logits.
struct FullPrefill {
  std::shared_ptr<const Model> model;
  Prompt p;
  ForwardBatch plain;
  std::vector<float> full = std::vector<float>(40);

  explicit FullPrefill(unsigned seed) {
    std::mt19937 rng(seed);
    model = test::tiny_model(rng, 4);
    p = random_prompt(rng);
    plain = prefill(p.tokens, 0);
    CpuBackend(model, 8, kBlock).forward(plain, full);
  }
};

}  // namespace

TEST_CASE("recompute quotas: ceil of the ratio per chunk, raised evenly up to min_tokens", "[reuse]") {
  CHECK(recompute_share(0.15, 200) == 30);  // 0.15 * 200 is 30.000000000000004 in double
  CHECK(recompute_share(0.15, 201) == 31);
  CHECK(recompute_share(0.0, 50) == 0);
  CHECK(recompute_share(1.0, 50) == 50);

  SelectiveRecompute r;
  r.chunks = {{0, 100, 0.1}, {100, 400, 0.1}};
  r.min_tokens = 0;
  CHECK(recompute_quotas(r) == std::vector<std::int32_t>{10, 30});
  r.min_tokens = 100;  // both shares rise by 0.15 to 0.25
  CHECK(recompute_quotas(r) == std::vector<std::int32_t>{25, 75});
  r.min_tokens = 1000;  // more than all chunk rows: every row
  CHECK(recompute_quotas(r) == std::vector<std::int32_t>{100, 300});

  // Per-chunk ratios (an adaptive policy): the even raise keeps their difference until one is full.
  r.chunks = {{0, 100, 0.9}, {100, 200, 0.0}};
  r.min_tokens = 0;
  CHECK(recompute_quotas(r) == std::vector<std::int32_t>{90, 0});
  r.min_tokens = 150;  // +0.1 fills the first chunk, +0.5 the rest
  CHECK(recompute_quotas(r) == std::vector<std::int32_t>{100, 50});
}

TEST_CASE("recompute rows: the highest deviations of each chunk, then the always rows", "[reuse]") {
  SelectiveRecompute r;
  r.min_tokens = 0;
  r.always = {{0, 2}, {10, 12}};
  r.chunks = {{2, 6, 0.5}, {6, 10, 0.25}};
  //                       0  1  2  3  4  5  6  7    8  9  10 11
  std::vector<float> dev = {0, 0, 1, 5, 3, 4, 2, 2, 0.5, 1, 0, 0};
  CHECK(select_recompute_rows(r, dev) == std::vector<std::int32_t>{0, 1, 3, 5, 6, 10, 11});  // tie 6/7: 6
  dev[8] = std::numeric_limits<float>::quiet_NaN();  // counts as the highest
  CHECK(select_recompute_rows(r, dev) == std::vector<std::int32_t>{0, 1, 3, 5, 8, 10, 11});
  r.chunks[0].ratio = r.chunks[1].ratio = 1.0;
  CHECK(select_recompute_rows(r, dev).size() == 12);
}

TEST_CASE("gradual filtering: stage quotas from multiples of the ratio, choices among running rows",
          "[reuse]") {
  SelectiveRecompute r;
  r.min_tokens = 0;
  r.chunks = {{0, 100, 0.1}, {100, 400, 0.4}};
  r.gradual = {3.0, 2.0};
  CHECK(r.last_check_layer() == r.check_layer + 2);
  CHECK(recompute_quotas(r, 0) == std::vector<std::int32_t>{30, 300});  // 0.3, min(1, 1.2)
  CHECK(recompute_quotas(r, 1) == std::vector<std::int32_t>{20, 240});
  CHECK(recompute_quotas(r, 2) == std::vector<std::int32_t>{10, 120});
  CHECK(recompute_quotas(r) == recompute_quotas(r, 2));
  r.min_tokens = 200;  // every stage is raised to at least 200 rows
  CHECK(recompute_quotas(r, 2)[0] + recompute_quotas(r, 2)[1] >= 200);

  // -inf marks rows an earlier stage dropped: never chosen, and a chunk keeps at most what it has.
  SelectiveRecompute g;
  g.min_tokens = 0;
  g.always = {{6, 7}};
  g.chunks = {{0, 6, 1.0}};
  constexpr float kOut = -std::numeric_limits<float>::infinity();
  //                             0     1  2  3     4  5  6
  const std::vector<float> dev = {kOut, 9, 1, kOut, 5, 2, 0};
  CHECK(select_recompute_rows(g, dev) == std::vector<std::int32_t>{1, 2, 4, 5, 6});
  g.chunks[0].ratio = 0.5;
  CHECK(select_recompute_rows(g, dev) == std::vector<std::int32_t>{1, 4, 5, 6});
}

TEST_CASE("rotate_keys moves a rotated key to another position, with and without Llama-3 scaling",
          "[reuse]") {
  std::mt19937 rng(7);
  const int heads = 3, dim = 64;
  RopeScaling llama3;
  llama3.enabled = true;
  llama3.factor = 8.0f;
  for (const RopeScaling& scaling : {RopeScaling{}, llama3}) {
    const auto inv_freq = cpu::rope_inv_freq(dim, 500000.0f, scaling);
    const auto k = test::random_vector(static_cast<std::size_t>(heads * dim), rng);
    for (const auto& [from, to] : {std::pair{0, 500}, std::pair{37, 4000}, std::pair{900, 3}}) {
      CAPTURE(scaling.enabled, from, to);
      auto moved = k;
      cpu::rope(moved.data(), 1, heads, dim, &from, inv_freq);
      rotate_keys(moved, heads, dim, to - from, inv_freq);
      auto direct = k;
      cpu::rope(direct.data(), 1, heads, dim, &to, inv_freq);
      double worst = 0;
      for (std::size_t i = 0; i < k.size(); ++i)
        worst = std::max(worst, std::abs(double(moved[i]) - direct[i]));
      CHECK(worst < 1e-4);  // fp32 angles of up to 4000 rad differ by about ulp(4000) = 2.4e-4 rad / 2
    }
    auto same = k;
    rotate_keys(same, heads, dim, 0, inv_freq);
    CHECK(same == k);
  }
  std::vector<float> odd(10);
  CHECK(error_code([&] { rotate_keys(odd, 1, 7, 1, std::vector<float>(3)); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([&] { rotate_keys(odd, 1, 4, 1, std::vector<float>(2)); }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("paged attention of rows at scattered positions equals those rows of the full batch", "[reuse]") {
  // The layers after the check layer attend with the selected rows only, at non-consecutive positions.
  std::mt19937 rng(13);
  const int n_heads = 6, n_kv = 2, dim = 16, kv_len = 90, block = 16;
  const int pages = (kv_len + block - 1) / block;
  std::vector<float> k = test::random_vector(static_cast<std::size_t>(pages * block * n_kv * dim), rng);
  std::vector<float> v = test::random_vector(k.size(), rng);
  const cpu::PagedKv cache{k.data(), v.data(), block, n_kv, dim};
  std::vector<std::int32_t> page_list(static_cast<std::size_t>(pages));
  std::iota(page_list.begin(), page_list.end(), 0);
  const std::vector<std::int32_t> page_start = {0, pages}, lens = {kv_len};
  const auto q = test::random_vector(static_cast<std::size_t>(kv_len * n_heads * dim), rng);
  std::vector<std::int32_t> all(static_cast<std::size_t>(kv_len));
  std::iota(all.begin(), all.end(), 0);
  const std::vector<std::int32_t> all_start = {0, kv_len};
  std::vector<float> full(q.size());
  cpu::paged_attention(q.data(), cache, {all_start, page_start, page_list, lens, all}, n_heads, 0.25f,
                       full.data());

  const std::vector<std::int32_t> some = {0, 3, 17, 18, 40, 63, 64, 89};
  const std::size_t row = static_cast<std::size_t>(n_heads * dim);
  std::vector<float> q_some, out(some.size() * row);
  for (const auto r : some) q_some.insert(q_some.end(), q.begin() + r * row, q.begin() + (r + 1) * row);
  const std::vector<std::int32_t> some_start = {0, static_cast<std::int32_t>(some.size())};
  cpu::paged_attention(q_some.data(), cache, {some_start, page_start, page_list, lens, some}, n_heads, 0.25f,
                       out.data());
  for (std::size_t i = 0; i < some.size(); ++i)
    for (std::size_t x = 0; x < row; ++x)
      CHECK(out[i * row + x] == Approx(full[static_cast<std::size_t>(some[i]) * row + x]).margin(1e-6));
}

TEST_CASE("chunk KV goes out of the cache and back in bit for bit; bad shapes are refused", "[reuse]") {
  std::mt19937 rng(11);
  const auto model = test::tiny_model(rng, 4);
  const Prompt p = random_prompt(rng);
  CpuBackend a(model, 8, kBlock);
  std::vector<float> logits(40);
  a.forward(prefill(p.tokens, 0), logits);
  const auto slots = slots_of(20, 30);
  const ChunkKv kv = a.read_chunk_kv(std::span(p.tokens).subspan(20, 30), 20, slots);
  CHECK(kv.position0 == 20);
  CHECK(kv.n_layers == 4);
  CHECK(kv.kv_dim == 32);

  // Written at its own position (into other slots) it is the same data; read back, the same ChunkKv.
  CpuBackend b(model, 8, kBlock);
  const auto other = slots_of(64, 30);
  b.write_chunk_kv(kv, 20, other);
  const ChunkKv back = b.read_chunk_kv(kv.tokens, 20, other);
  CHECK(back.data == kv.data);
  // At another position the values are the same and the keys are not.
  b.write_chunk_kv(kv, 25, other);
  const ChunkKv moved = b.read_chunk_kv(kv.tokens, 25, other);
  for (int l = 0; l < 4; ++l) {
    CHECK(std::ranges::equal(moved.v(l), kv.v(l)));
    CHECK(!std::ranges::equal(moved.k(l), kv.k(l)));
  }

  auto code = [&](auto f) { return error_code(f); };
  CHECK(code([&] { b.write_chunk_kv(kv, 20, slots_of(0, 29)); }) == ErrorCode::kInvalidArgument);
  CHECK(code([&] { b.write_chunk_kv(kv, -1, other); }) == ErrorCode::kInvalidArgument);
  CHECK(code([&] { b.write_chunk_kv(kv, 20, slots_of(8 * kBlock - 29, 30)); }) ==
        ErrorCode::kInvalidArgument);
  ChunkKv wrong = ChunkKv::zeros(kv.tokens, 3, 32);
  CHECK(code([&] { b.write_chunk_kv(wrong, 0, other); }) == ErrorCode::kInvalidArgument);
  wrong = ChunkKv::zeros(kv.tokens, 4, 16);
  CHECK(code([&] { b.write_chunk_kv(wrong, 0, other); }) == ErrorCode::kInvalidArgument);
  CHECK(code([&] { (void)b.read_chunk_kv(kv.tokens, 0, slots_of(0, 3)); }) == ErrorCode::kInvalidArgument);
  CHECK(code([&] { (void)b.read_chunk_kv({}, 0, {}); }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("a selective forward at ratio 1 is the full prefill, bit for bit", "[reuse]") {
  const FullPrefill f(3);
  const auto& [model, p, plain, full] = f;
  std::vector<float> again(40);
  // Also with a gradual stage: multiples that keep every row at every stage change nothing.
  for (const auto& [ratio, min_tokens] : {std::pair{1.0, 0}, std::pair{0.0, 1000}}) {
    for (const auto& [check_layer, stages] : {std::pair{0, 0}, {1, 0}, {3, 0}, {0, 2}, {1, 1}}) {
      CAPTURE(ratio, min_tokens, check_layer, stages);
      auto backend = with_chunks_loaded(model, p);
      SelectiveRecompute r = recompute_for(ratio, min_tokens);
      r.check_layer = check_layer;
      r.gradual.assign(static_cast<std::size_t>(stages), 1.0);
      SelectiveRecomputeReport report;
      r.report = &report;
      ForwardBatch b = plain;
      b.recompute = &r;
      backend->forward(b, again);
      CHECK(again == full);
      CHECK(report.rows.size() == static_cast<std::size_t>(Prompt::kRows));
      CHECK(report.row_deviation.size() == static_cast<std::size_t>(Prompt::kRows));
      CHECK(report.chunk_deviation.size() == 2);
      CHECK(report.chunk_deviation[0] > 0);
    }
  }
}

TEST_CASE("gradual filtering: each stage keeps the highest deviations among the rows still running",
          "[reuse]") {
  const FullPrefill f(6);
  const auto& [model, p, plain, full] = f;
  std::vector<float> logits(40);

  // Stage 0 at layer 1 keeps 2 x 0.25 = 16 rows of each chunk, stage 1 at layer 2 keeps 8 of those.
  auto backend = with_chunks_loaded(model, p);
  const auto all_slots = slots_of(0, Prompt::kRows);
  const ChunkKv loaded = backend->read_chunk_kv(p.tokens, 0, all_slots);
  SelectiveRecompute r = recompute_for(0.25);
  r.gradual = {2.0};
  SelectiveRecomputeReport report;
  r.report = &report;
  ForwardBatch b = plain;
  b.recompute = &r;
  backend->forward(b, logits);
  const ChunkKv after = backend->read_chunk_kv(p.tokens, 0, all_slots);
  REQUIRE(report.rows.size() == 2 * 8 + 16);  // the final stage's rows
  // The stage-0 survivors of each chunk: its 16 highest layer-1 deviations (report.row_deviation).
  std::vector<std::int32_t> stage0;
  for (int c = 0; c < 2; ++c) {
    std::vector<std::int32_t> rows(Prompt::kChunk);
    std::iota(rows.begin(), rows.end(), Prompt::kSystem + c * Prompt::kChunk);
    std::ranges::stable_sort(rows, [&](std::int32_t x, std::int32_t y) {
      return report.row_deviation[std::size_t(x)] > report.row_deviation[std::size_t(y)];
    });
    stage0.insert(stage0.end(), rows.begin(), rows.begin() + 16);
  }
  std::ranges::sort(stage0);
  const int dim = 32;
  auto row_of = [&](std::span<const float> layer, int j) { return layer.subspan(std::size_t(j) * dim, dim); };
  for (int j = Prompt::kSystem; j < Prompt::kRows - Prompt::kQuestion; ++j) {
    CAPTURE(j);
    const bool in_stage0 = std::ranges::binary_search(stage0, j);
    const bool in_final = std::ranges::binary_search(report.rows, j);
    CHECK((!in_final || in_stage0));  // the final rows are chosen among stage 0's
    // Layer 2 (stage 1's check layer) has fresh KV exactly for stage 0's rows; layer 3 for the final ones.
    CHECK(std::ranges::equal(row_of(after.k(2), j), row_of(loaded.k(2), j)) == !in_stage0);
    CHECK(std::ranges::equal(row_of(after.k(3), j), row_of(loaded.k(3), j)) == !in_final);
  }
  CHECK(std::ranges::all_of(logits, [](float x) { return std::isfinite(x); }));
  CHECK(logits != full);
}

TEST_CASE("a selective forward keeps the loaded KV of the rows it does not recompute", "[reuse]") {
  std::mt19937 rng(5);
  const auto model = test::tiny_model(rng, 4);
  const Prompt p = random_prompt(rng);
  const ForwardBatch plain = prefill(p.tokens, 0);
  std::vector<float> logits(40), full(40);
  CpuBackend reference(model, 8, kBlock);
  reference.forward(plain, full);
  const auto all_slots = slots_of(0, Prompt::kRows);
  const ChunkKv fresh = reference.read_chunk_kv(p.tokens, 0, all_slots);

  auto backend = with_chunks_loaded(model, p);
  const ChunkKv loaded = backend->read_chunk_kv(p.tokens, 0, all_slots);
  SelectiveRecompute r = recompute_for(0.25);
  SelectiveRecomputeReport report;
  r.report = &report;
  ForwardBatch b = plain;
  b.recompute = &r;
  backend->forward(b, logits);
  CHECK(logits != full);
  const ChunkKv after = backend->read_chunk_kv(p.tokens, 0, all_slots);

  // 8 rows of each chunk and the 16 always rows, ascending.
  REQUIRE(report.rows.size() == 2 * 8 + 16);
  CHECK(std::is_sorted(report.rows.begin(), report.rows.end()));
  const int dim = 32;
  auto row_of = [&](std::span<const float> layer, int j) { return layer.subspan(std::size_t(j) * dim, dim); };
  for (int j = 0; j < Prompt::kRows; ++j) {
    CAPTURE(j);
    const bool kept = std::ranges::binary_search(report.rows, j);
    // Layers 0 and 1 (check layer) are a full prefill's.
    for (int l = 0; l <= 1; ++l) {
      CHECK(std::ranges::equal(row_of(after.k(l), j), row_of(fresh.k(l), j)));
      CHECK(std::ranges::equal(row_of(after.v(l), j), row_of(fresh.v(l), j)));
    }
    // Past it, rows not recomputed keep the loaded KV; recomputed ones got new KV.
    for (int l = 2; l < 4; ++l) {
      if (!kept) {
        CHECK(std::ranges::equal(row_of(after.k(l), j), row_of(loaded.k(l), j)));
        CHECK(std::ranges::equal(row_of(after.v(l), j), row_of(loaded.v(l), j)));
      } else if (j >= Prompt::kSystem && j < Prompt::kRows - Prompt::kQuestion) {
        CHECK(!std::ranges::equal(row_of(after.k(l), j), row_of(loaded.k(l), j)));
      }
    }
    // The deviation is the squared distance between the fresh and the loaded check-layer key.
    const bool in_chunk = j >= Prompt::kSystem && j < Prompt::kRows - Prompt::kQuestion;
    double d = 0;
    for (int i = 0; i < dim; ++i) {
      const double e = double(fresh.k(1)[std::size_t(j * dim + i)]) - loaded.k(1)[std::size_t(j * dim + i)];
      d += e * e;
    }
    CHECK(report.row_deviation[std::size_t(j)] == Approx(in_chunk ? d : 0.0).epsilon(1e-5));
  }
  // The first chunk token was computed at position 0 with no context at all: it deviates most.
  CHECK(std::ranges::binary_search(report.rows, Prompt::kSystem));
}

TEST_CASE("a malformed SelectiveRecompute is refused", "[reuse]") {
  std::mt19937 rng(9);
  const auto model = test::tiny_model(rng, 4);
  const Prompt p = random_prompt(rng);
  CpuBackend backend(model, 16, kBlock);
  std::vector<float> logits(80);
  const SelectiveRecompute good = recompute_for(0.5);
  auto code = [&](const SelectiveRecompute& r, ForwardBatch b) {
    b.recompute = &r;
    return error_code([&] { backend.forward(b, logits); });
  };
  const ForwardBatch plain = prefill(p.tokens, 0);
  CHECK(code(good, plain) == std::nullopt);

  auto with = [&](auto edit) {
    SelectiveRecompute r = good;
    edit(r);
    return code(r, plain);
  };
  const auto kBad = std::optional(ErrorCode::kInvalidArgument);
  CHECK(with([](auto& r) { r.chunks[1].end = Prompt::kRows + 1; }) == kBad);  // past the batch
  CHECK(with([](auto& r) { r.chunks[0].begin = -1; }) == kBad);               // before it
  CHECK(with([](auto& r) { r.chunks[1].begin -= 1; }) == kBad);               // chunks overlap
  CHECK(with([](auto& r) { r.chunks[1].end -= 1; }) == kBad);                 // a row in no range
  CHECK(with([](auto& r) { r.always[0].end += 1; }) == kBad);                 // always overlaps a chunk
  CHECK(with([](auto& r) { r.chunks[0].end = r.chunks[0].begin; }) == kBad);  // empty chunk
  CHECK(with([](auto& r) { r.chunks[0].ratio = 1.5; }) == kBad);
  CHECK(with([](auto& r) { r.chunks[0].ratio = -0.1; }) == kBad);
  CHECK(with([](auto& r) { r.chunks[0].ratio = std::nan(""); }) == kBad);
  CHECK(with([](auto& r) { r.check_layer = -1; }) == kBad);
  CHECK(with([](auto& r) { r.check_layer = 4; }) == kBad);  // the model has 4 layers
  CHECK(with([](auto& r) { r.min_tokens = -1; }) == kBad);
  CHECK(with([](auto& r) { r.gradual = {2.0, 2.0}; }) == std::nullopt);  // stages at layers 1, 2, 3
  CHECK(with([](auto& r) { r.gradual = {2.0, 2.0, 2.0}; }) == kBad);     // a stage at layer 4
  CHECK(with([](auto& r) { r.gradual = {0.9}; }) == kBad);
  CHECK(with([](auto& r) { r.gradual = {2.0, 3.0}; }) == kBad);
  CHECK(with([](auto& r) { r.gradual = {std::nan("")}; }) == kBad);

  ForwardBatch b = plain;
  b.logit_rows = {Prompt::kSystem + 3};  // a chunk row: it may not run to the last layer
  CHECK(code(good, b) == kBad);
  b.logit_rows = {0, Prompt::kRows - 1};  // always rows: fine
  CHECK(code(good, b) == std::nullopt);

  // Two sequences: the second one a copy on pages 8.. .
  b = plain;
  const auto rows = static_cast<std::int32_t>(b.rows());
  const auto pages = static_cast<std::int32_t>(b.pages.size());
  for (std::int32_t i = 0; i < rows; ++i) {
    b.tokens.push_back(b.tokens[std::size_t(i)]);
    b.positions.push_back(i);
    b.slots.push_back(8 * kBlock + i);
  }
  for (std::int32_t i = 0; i < pages; ++i) b.pages.push_back(8 + i);
  b.query_start.push_back(2 * rows);
  b.page_start.push_back(2 * pages);
  b.kv_len.push_back(rows);
  CHECK(code(good, b) == kBad);

  // Sparse and selective in one batch.
  struct DenseSelector final : SparseSelector {
    int tile() const override { return 64; }
    int min_kv_len() const override { return 0; }
    BlockMask select(const AttentionProbe& probe) override { return dense_mask(probe, 64); }
  } dense;
  b = plain;
  b.sparse = &dense;
  CHECK(code(good, b) == kBad);
}
