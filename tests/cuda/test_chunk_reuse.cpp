// Chunk reuse on the GPU against the CPU backend, on a small random model (head_dim 64, no model
// file): chunk KV placed with a re-rotation and read back; the device tier (placement from it,
// LRU eviction by capacity, misses, bad slots); the selective forward (ratio 1 is the plain
// forward bit for bit, low ratios give the CPU's logits within the storage type's rounding, the
// KV of rows not recomputed stays loaded, a single kept row, forward_sample, a bad check layer).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/cuda_backend.hpp"
#include "model_compare.hpp"
#include "unit/compare.hpp"
#include "unit/error_code.hpp"
#include "unit/random_model.hpp"

namespace {

using namespace chunkwise;
using test::error_code;

constexpr int kBlock = 16;
constexpr int kBlocks = 64;
constexpr int kVocab = 256;

// hidden 256, 4 query / 2 KV heads of 64 (a head_dim the GPU kernels take), MLP 512; weights
// scaled like test::tiny_model's for the wider rows.
std::shared_ptr<const Model> gpu_model(std::mt19937& rng, int n_layers) {
  LoadedModel m;
  ModelConfig& c = m.config;
  c.name = "tiny-gpu";
  c.n_layers = n_layers;
  c.hidden = 256;
  c.ffn = 512;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.vocab = kVocab;
  c.max_context = 4096;
  auto matrix = [&](std::int64_t rows, std::int64_t cols, float range) {
    Matrix w(rows, cols);
    w.data = test::random_vector(static_cast<std::size_t>(rows * cols), rng, -range, range);
    return w;
  };
  m.weights.token_embedding = matrix(c.vocab, c.hidden, 1.0f);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights L;
    L.attn_norm.assign(static_cast<std::size_t>(c.hidden), 1.0f);
    L.ffn_norm.assign(static_cast<std::size_t>(c.hidden), 1.0f);
    L.wq = matrix(c.q_dim(), c.hidden, 0.2f);
    L.wk = matrix(c.kv_dim(), c.hidden, 0.2f);
    L.wv = matrix(c.kv_dim(), c.hidden, 0.15f);
    L.wo = matrix(c.hidden, c.q_dim(), 0.1f);
    L.w_gate = matrix(c.ffn, c.hidden, 0.1f);
    L.w_up = matrix(c.ffn, c.hidden, 0.1f);
    L.w_down = matrix(c.hidden, c.ffn, 0.07f);
    m.weights.layers.push_back(std::move(L));
  }
  m.weights.output_norm.assign(static_cast<std::size_t>(c.hidden), 1.0f);
  m.source = "random";
  return std::make_shared<const Model>(std::move(m));
}

std::vector<TokenId> random_tokens(std::mt19937& rng, int n) {
  std::uniform_int_distribution<int> token(0, kVocab - 1);
  std::vector<TokenId> t(static_cast<std::size_t>(n));
  for (auto& x : t) x = token(rng);
  return t;
}

// One sequence's page table: the pool's blocks in a scrambled order, so that no position sits at
// the slot of the same number.
std::int32_t page(int i) {
  return static_cast<std::int32_t>((i * 37 + 11) % kBlocks);
}
std::int64_t slot_of(std::int32_t position) {
  return static_cast<std::int64_t>(page(position / kBlock)) * kBlock + position % kBlock;
}
std::vector<std::int64_t> slots_of(std::int32_t first, std::int32_t n) {
  std::vector<std::int64_t> s;
  for (std::int32_t p = first; p < first + n; ++p) s.push_back(slot_of(p));
  return s;
}

// A prefill of tokens at positions first.. with the logits of the last n_logits rows.
ForwardBatch prefill(std::span<const TokenId> tokens, std::int32_t first, std::int32_t n_logits = 1) {
  ForwardBatch b;
  b.tokens.assign(tokens.begin(), tokens.end());
  const auto n = static_cast<std::int32_t>(tokens.size());
  for (std::int32_t i = 0; i < n; ++i) {
    b.positions.push_back(first + i);
    b.slots.push_back(slot_of(first + i));
  }
  const std::int32_t kv_len = first + n;
  const int pages = (kv_len + kBlock - 1) / kBlock;
  for (int p = 0; p < pages; ++p) b.pages.push_back(page(p));
  b.query_start = {0, n};
  b.page_start = {0, pages};
  b.kv_len = {kv_len};
  for (std::int32_t r = n - n_logits; r < n; ++r) b.logit_rows.push_back(r);
  return b;
}

// A chunk's KV computed alone at positions 0.. on the CPU (fp32), as a ChunkStore would hold it.
ChunkKv standalone_kv(const std::shared_ptr<const Model>& model, std::span<const TokenId> tokens) {
  CpuBackend alone(model, kBlocks, kBlock);
  std::vector<float> logits(kVocab);
  alone.forward(prefill(tokens, 0), logits);
  return alone.read_chunk_kv(tokens, 0, slots_of(0, static_cast<std::int32_t>(tokens.size())));
}

// One rounding to the storage type, plus an ulp for a double rounding: 2^-7 relative for bf16,
// 2^-10 for fp16.
double storage_eps(cuda::DType dtype) {
  return dtype == cuda::DType::kBF16 ? 1.0 / 128 : 1.0 / 1024;
}

// How many elements of gpu are farther from cpu than eps relative (plus a tiny absolute margin).
std::size_t outside(std::span<const float> gpu, std::span<const float> cpu, double eps) {
  REQUIRE(gpu.size() == cpu.size());
  std::size_t bad = 0;
  for (std::size_t i = 0; i < gpu.size(); ++i)
    if (!(std::abs(double(gpu[i]) - cpu[i]) <= eps * std::abs(double(cpu[i])) + 1e-6)) ++bad;
  return bad;
}

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (const float x : v) m = std::max(m, std::abs(double(x)));
  return m;
}

}  // namespace

TEST_CASE("GPU chunk KV placement and read-back match the CPU backend", "[cuda][reuse]") {
  std::mt19937 rng(21);
  const auto model = gpu_model(rng, 4);
  const int layers = 4;
  const std::vector<TokenId> tokens = random_tokens(rng, 48);
  const ForwardBatch b = prefill(tokens, 0);
  CpuBackend cpu(model, kBlocks, kBlock);
  std::vector<float> logits(kVocab);
  cpu.forward(b, logits);
  const ChunkKv kv = cpu.read_chunk_kv(tokens, 0, slots_of(0, 48));

  for (const cuda::DType dtype : {cuda::DType::kBF16, cuda::DType::kF16}) {
    const std::string name(cuda::to_string(dtype));
    CAPTURE(name);
    const double eps = storage_eps(dtype);
    cuda::CudaBackend gpu(model, kBlocks, kBlock, 0, dtype);

    // Read after the GPU's own prefill: the CPU's KV up to the forward's rounding.
    gpu.forward(b, logits);
    const ChunkKv own = gpu.read_chunk_kv(tokens, 0, slots_of(0, 48));
    CHECK(own.position0 == 0);
    CHECK(own.tokens == kv.tokens);
    REQUIRE(own.data.size() == kv.data.size());
    const double err = test::max_abs_diff(own.data, kv.data) / max_abs(kv.data);
    std::printf("chunk KV of a GPU prefill (%s) vs CPU: max error %.2e of the largest value\n", name.c_str(),
                err);
    CHECK(err < 20 * eps);

    // Placed at its own position and read back: kv rounded to the storage type. Placed 100
    // positions later: the CPU's rotated keys rounded, and the same values.
    for (const std::int32_t position : {0, 100, 7}) {
      CAPTURE(position);
      const auto slots = slots_of(position + 200, 48);  // other slots than the prefill's
      gpu.write_chunk_kv(kv, position, slots);
      cpu.write_chunk_kv(kv, position, slots);
      const ChunkKv g = gpu.read_chunk_kv(tokens, position, slots);
      const ChunkKv c = cpu.read_chunk_kv(tokens, position, slots);
      CHECK(g.position0 == position);
      CHECK(outside(g.data, c.data, eps) == 0);
      for (int l = 0; l < layers; ++l) CHECK(outside(g.v(l), kv.v(l), eps) == 0);
    }

    auto code = [](auto f) { return error_code(f); };
    CHECK(code([&] { gpu.write_chunk_kv(kv, 0, slots_of(0, 47)); }) == ErrorCode::kInvalidArgument);
    CHECK(code([&] { gpu.write_chunk_kv(kv, -1, slots_of(0, 48)); }) == ErrorCode::kInvalidArgument);
    std::vector<std::int64_t> bad = slots_of(0, 48);
    bad[5] = kBlocks * kBlock;
    CHECK(code([&] { gpu.write_chunk_kv(kv, 0, bad); }) == ErrorCode::kInvalidArgument);
    CHECK(code([&] { gpu.write_chunk_kv(ChunkKv::zeros(tokens, 3, 128), 0, slots_of(0, 48)); }) ==
          ErrorCode::kInvalidArgument);
    CHECK(code([&] { (void)gpu.read_chunk_kv(tokens, 0, slots_of(0, 3)); }) == ErrorCode::kInvalidArgument);
  }
}

namespace {
// Chunks of a 3-layer model computed alone: a, b and c of 32 tokens, big of 64; entry: the bytes a
// 32-token entry takes in 16-bit storage.
struct TierChunks {
  std::shared_ptr<const Model> model;
  ChunkKv a, b, c, big;
  std::size_t entry = 0;
  explicit TierChunks(unsigned seed) {
    std::mt19937 rng(seed);
    model = gpu_model(rng, 3);
    const std::vector<TokenId> tokens = random_tokens(rng, 96 + 64);
    const auto span = std::span<const TokenId>(tokens);
    a = standalone_kv(model, span.subspan(0, 32));
    b = standalone_kv(model, span.subspan(32, 32));
    c = standalone_kv(model, span.subspan(64, 32));
    big = standalone_kv(model, span.subspan(96, 64));
    entry = a.data.size() * 2;
  }
};
}  // namespace

TEST_CASE("GPU chunk tier: placement equals write_chunk_kv, LRU eviction by capacity, misses",
          "[cuda][reuse]") {
  const TierChunks t(22);
  const auto& [model, a, b, c, big, entry] = t;
  const ChunkKey ka{1, 1}, kb{2, 2}, kc{3, 3}, kbig{4, 4};

  cuda::CudaBackend gpu(model, kBlocks, kBlock);
  CHECK(gpu.chunk_tier_usage().device_entries == 0);
  gpu.keep_chunk_kv(ka, a);  // capacity 0: disabled
  CHECK(gpu.chunk_tier_usage().device_entries == 0);
  CHECK_FALSE(gpu.write_kept_chunk_kv(ka, 0, slots_of(0, 32)));

  gpu.set_chunk_tier_capacity(entry * 5 / 2);
  gpu.keep_chunk_kv(ka, a);
  gpu.keep_chunk_kv(kb, b);
  CHECK(gpu.chunk_tier_usage().device_entries == 2);
  CHECK(gpu.chunk_tier_usage().device_bytes == 2 * entry);

  // From the tier, at its own position and 300 later: what write_chunk_kv places, up to the
  // rounding of the stored keys before their rotation.
  for (const std::int32_t position : {0, 300}) {
    CAPTURE(position);
    const auto kept_slots = slots_of(position, 32), host_slots = slots_of(position + 400, 32);
    REQUIRE(gpu.write_kept_chunk_kv(ka, position, kept_slots));
    gpu.write_chunk_kv(a, position, host_slots);
    const ChunkKv kept = gpu.read_chunk_kv(a.tokens, position, kept_slots);
    const ChunkKv host = gpu.read_chunk_kv(a.tokens, position, host_slots);
    if (position == 0) {
      CHECK(kept.data == host.data);
    } else {
      // A rounding error of one element of a rotated pair moves into the other: relative to the
      // largest key, not to each.
      CHECK(test::max_abs_diff(kept.data, host.data) <=
            2 * storage_eps(cuda::DType::kBF16) * max_abs(host.data));
      for (int l = 0; l < 3; ++l) CHECK(std::ranges::equal(kept.v(l), host.v(l)));
    }
  }

  // a was used last: keeping c evicts b.
  gpu.keep_chunk_kv(kc, c);
  CHECK(gpu.chunk_tier_usage().device_entries == 2);
  CHECK_FALSE(gpu.write_kept_chunk_kv(kb, 0, slots_of(0, 32)));
  CHECK(gpu.write_kept_chunk_kv(kc, 0, slots_of(0, 32)));
  CHECK(gpu.write_kept_chunk_kv(ka, 0, slots_of(0, 32)));

  auto code = [](auto f) { return error_code(f); };
  CHECK(code([&] { (void)gpu.write_kept_chunk_kv(ka, 0, slots_of(0, 31)); }) == ErrorCode::kInvalidArgument);
  CHECK(code([&] { (void)gpu.write_kept_chunk_kv(ka, -1, slots_of(0, 32)); }) == ErrorCode::kInvalidArgument);
  std::vector<std::int64_t> bad = slots_of(0, 32);
  bad[0] = -1;
  CHECK(code([&] { (void)gpu.write_kept_chunk_kv(ka, 0, bad); }) == ErrorCode::kInvalidArgument);

  // Keeping a key again replaces it; an entry larger than the capacity is not kept.
  gpu.keep_chunk_kv(kc, b);
  CHECK(gpu.chunk_tier_usage().device_entries == 2);
  CHECK(gpu.chunk_tier_usage().device_bytes == 2 * entry);
  REQUIRE(gpu.write_kept_chunk_kv(kc, 0, slots_of(0, 32)));
  gpu.write_chunk_kv(b, 0, slots_of(400, 32));
  CHECK(gpu.read_chunk_kv(b.tokens, 0, slots_of(0, 32)).data ==
        gpu.read_chunk_kv(b.tokens, 0, slots_of(400, 32)).data);
  gpu.keep_chunk_kv(kbig, big);  // 2 entries' bytes fit in 2.5, with the others evicted
  CHECK(gpu.chunk_tier_usage().device_entries == 1);
  CHECK(gpu.chunk_tier_usage().device_bytes == 2 * entry);

  // Shrinking evicts; 0 empties.
  gpu.keep_chunk_kv(ka, a);
  CHECK(gpu.chunk_tier_usage().device_entries == 1);  // big was least recently used
  CHECK(gpu.write_kept_chunk_kv(ka, 0, slots_of(0, 32)));
  gpu.set_chunk_tier_capacity(entry);
  CHECK(gpu.chunk_tier_usage().device_entries == 1);
  gpu.keep_chunk_kv(kbig, big);  // larger than the capacity: not kept, nothing evicted
  CHECK(gpu.chunk_tier_usage().device_entries == 1);
  CHECK(gpu.write_kept_chunk_kv(ka, 0, slots_of(0, 32)));
  gpu.set_chunk_tier_capacity(0);
  CHECK(gpu.chunk_tier_usage().device_entries == 0);
  CHECK(gpu.chunk_tier_usage().device_bytes == 0);
  CHECK_FALSE(gpu.write_kept_chunk_kv(ka, 0, slots_of(0, 32)));
}

namespace {

// The prompt [system 0..8)[chunk 8..104)[chunk 104..200)[question 200..224), its chunks' KV
// computed alone (CPU, fp32) and loaded into a backend at their places before each selective step.
struct Prompt {
  static constexpr std::int32_t kSystem = 8, kChunk = 96, kQuestion = 24;
  static constexpr std::int32_t kRows = kSystem + 2 * kChunk + kQuestion;
  std::vector<TokenId> tokens;
  std::vector<ChunkKv> chunks;

  Prompt(const std::shared_ptr<const Model>& model, std::mt19937& rng) : tokens(random_tokens(rng, kRows)) {
    for (int i = 0; i < 2; ++i)
      chunks.push_back(
          standalone_kv(model, std::span(tokens).subspan(static_cast<std::size_t>(begin(i)), kChunk)));
  }
  static std::int32_t begin(int chunk) { return kSystem + chunk * kChunk; }
  template <class Backend>
  void load(Backend& backend) const {
    for (int i = 0; i < 2; ++i)
      backend.write_chunk_kv(chunks[static_cast<std::size_t>(i)], begin(i), slots_of(begin(i), kChunk));
  }
  [[nodiscard]] ForwardBatch batch() const { return prefill(tokens, 0, kQuestion); }
  [[nodiscard]] static SelectiveRecompute recompute(double ratio, std::int32_t min_tokens, int check_layer) {
    SelectiveRecompute r;
    r.check_layer = check_layer;
    r.min_tokens = min_tokens;
    r.always = {{0, kSystem}, {kRows - kQuestion, kRows}};
    for (int i = 0; i < 2; ++i) r.chunks.push_back({begin(i), begin(i) + kChunk, ratio});
    return r;
  }
};

template <class Backend>
std::vector<float> selective_logits(Backend& backend, const Prompt& p, SelectiveRecompute& r,
                                    SelectiveRecomputeReport& report) {
  p.load(backend);
  r.report = &report;
  ForwardBatch b = p.batch();
  b.recompute = &r;
  std::vector<float> logits(static_cast<std::size_t>(Prompt::kQuestion) * kVocab);
  backend.forward(b, logits);
  return logits;
}

}  // namespace

TEST_CASE("GPU selective forward at ratio 1 is the plain forward, bit for bit", "[cuda][reuse]") {
  std::mt19937 rng(23);
  const auto model = gpu_model(rng, 4);
  const Prompt p(model, rng);
  for (const cuda::DType dtype : {cuda::DType::kBF16, cuda::DType::kF16}) {
    cuda::CudaBackend gpu(model, kBlocks, kBlock, 0, dtype);
    std::vector<float> plain(static_cast<std::size_t>(Prompt::kQuestion) * kVocab);
    gpu.forward(p.batch(), plain);
    for (const int check_layer : {0, 1, 3}) {
      const std::string name(cuda::to_string(dtype));
      CAPTURE(name, check_layer);
      SelectiveRecompute r = Prompt::recompute(1.0, 0, check_layer);
      SelectiveRecomputeReport report;
      CHECK(selective_logits(gpu, p, r, report) == plain);
      CHECK(report.rows.size() == static_cast<std::size_t>(Prompt::kRows));
      CHECK(report.row_deviation.size() == static_cast<std::size_t>(Prompt::kRows));
      REQUIRE(report.chunk_deviation.size() == 2);
      CHECK(report.chunk_deviation[0] > 0);
    }
  }
}

TEST_CASE("GPU selective forward matches the CPU backend's and keeps the loaded KV elsewhere",
          "[cuda][reuse]") {
  std::mt19937 rng(24);
  const int layers = 4;
  const auto model = gpu_model(rng, layers);
  const Prompt p(model, rng);
  const int vocab = kVocab;
  CpuBackend cpu(model, kBlocks, kBlock);
  std::vector<float> cpu_full(static_cast<std::size_t>(Prompt::kQuestion) * vocab);
  cpu.forward(p.batch(), cpu_full);

  for (const int check_layer : {1, layers - 1}) {
    SelectiveRecompute rc = Prompt::recompute(0.15, 16, check_layer);
    SelectiveRecomputeReport cpu_report;
    const std::vector<float> cpu_sel = selective_logits(cpu, p, rc, cpu_report);
    // 15 of each chunk's 96 rows (ceil(0.15 * 96)), and the 32 always rows.
    REQUIRE(cpu_report.rows.size() == 2 * 15 + 32);
    for (const cuda::DType dtype : {cuda::DType::kBF16, cuda::DType::kF16}) {
      const std::string name(cuda::to_string(dtype));
      CAPTURE(name, check_layer);
      const bool is_bf16 = dtype == cuda::DType::kBF16;
      cuda::CudaBackend gpu(model, kBlocks, kBlock, 0, dtype);
      SelectiveRecompute rg = Prompt::recompute(0.15, 16, check_layer);
      SelectiveRecomputeReport report;
      const std::vector<float> gpu_sel = selective_logits(gpu, p, rg, report);

      // The quotas are the CPU's; the rows may differ where two deviations are within rounding.
      CHECK(report.rows.size() == cpu_report.rows.size());
      std::vector<std::int32_t> common;
      std::ranges::set_intersection(report.rows, cpu_report.rows, std::back_inserter(common));
      REQUIRE(report.row_deviation.size() == static_cast<std::size_t>(Prompt::kRows));
      for (const auto& a : rg.always)
        for (std::int32_t j = a.begin; j < a.end; ++j)
          CHECK(report.row_deviation[static_cast<std::size_t>(j)] == 0);
      REQUIRE(report.chunk_deviation.size() == 2);
      for (std::size_t i = 0; i < 2; ++i) {
        const double cpu_d = cpu_report.chunk_deviation[i];
        CHECK(std::abs(report.chunk_deviation[i] - cpu_d) <= (is_bf16 ? 0.1 : 0.05) * cpu_d);
      }

      const cuda_test::Agreement a = cuda_test::compare(cpu_sel, gpu_sel, vocab);
      const cuda_test::Agreement full = cuda_test::compare(cpu_full, cpu_sel, vocab);
      std::printf(
          "selective, check layer %d, %s: %zu rows (%zu as on the CPU); vs CPU top-1 %.3f, KL %.2e "
          "(max %.2e); CPU selective vs full: top-1 %.3f, KL %.2e\n",
          check_layer, name.c_str(), report.rows.size(), common.size(), a.top1, a.mean_kl, a.max_kl,
          full.top1, full.mean_kl);
      // Rounding the weights alone to bf16 in the CPU reference gives KL 5e-5 here.
      CHECK(a.top1 >= 0.95);
      CHECK(a.mean_kl < (is_bf16 ? 0.01 : 2e-3));
      // At check layer 1 the selective logits are far from the full prefill's (KL 0.06 on the CPU):
      // the GPU's are the selective ones. Past the last layer only the final norm is narrowed.
      if (check_layer == 1) CHECK(a.mean_kl < full.mean_kl / 4);
    }
  }

  // The cache after a selective step: layers up to the check layer hold the plain forward's KV,
  // later layers the loaded KV where a row was not recomputed.
  cuda::CudaBackend gpu(model, kBlocks, kBlock);
  const auto all_slots = slots_of(0, Prompt::kRows);
  std::vector<float> scratch(cpu_full.size());
  gpu.forward(p.batch(), scratch);
  const ChunkKv fresh = gpu.read_chunk_kv(p.tokens, 0, all_slots);
  p.load(gpu);
  const ChunkKv loaded = gpu.read_chunk_kv(p.tokens, 0, all_slots);
  SelectiveRecompute r = Prompt::recompute(0.15, 16, 1);
  SelectiveRecomputeReport report;
  (void)selective_logits(gpu, p, r, report);
  const ChunkKv after = gpu.read_chunk_kv(p.tokens, 0, all_slots);
  const auto dim = static_cast<std::size_t>(model->config().kv_dim());
  auto row_of = [&](std::span<const float> layer, std::int32_t j) {
    return layer.subspan(static_cast<std::size_t>(j) * dim, dim);
  };
  for (std::int32_t j = 0; j < Prompt::kRows; ++j) {
    CAPTURE(j);
    for (int l = 0; l <= 1; ++l) {
      CHECK(std::ranges::equal(row_of(after.k(l), j), row_of(fresh.k(l), j)));
      CHECK(std::ranges::equal(row_of(after.v(l), j), row_of(fresh.v(l), j)));
    }
    const bool in_chunk = j >= Prompt::kSystem && j < Prompt::kRows - Prompt::kQuestion;
    if (!in_chunk || std::ranges::binary_search(report.rows, j)) continue;
    for (int l = 2; l < layers; ++l) {
      CHECK(std::ranges::equal(row_of(after.k(l), j), row_of(loaded.k(l), j)));
      CHECK(std::ranges::equal(row_of(after.v(l), j), row_of(loaded.v(l), j)));
    }
  }
}

TEST_CASE("GPU selective forward over queued chunk-tier chunks equals it over placed ones, from either level",
          "[cuda][reuse]") {
  std::mt19937 rng(28);
  const auto model = gpu_model(rng, 4);
  const Prompt p(model, rng);
  const ChunkKey keys[2] = {{1, 1}, {2, 2}};
  const std::span<const TokenId> chunk0 = std::span(p.tokens).subspan(Prompt::begin(0), Prompt::kChunk);
  const auto all_slots = slots_of(0, Prompt::kRows);
  std::vector<float> first_logits;
  for (const bool host_level : {false, true}) {
    CAPTURE(host_level);
    cuda::CudaBackend gpu(model, kBlocks, kBlock);
    // The host level: placed layer by layer over the host link.
    gpu.set_chunk_tier_capacity(host_level ? 0 : std::size_t{1} << 24, host_level ? std::size_t{1} << 24 : 0);
    for (int i = 0; i < 2; ++i) gpu.keep_chunk_kv(keys[i], p.chunks[static_cast<std::size_t>(i)]);
    const cuda::ChunkTierUsage usage = gpu.chunk_tier_usage();
    CHECK(usage.device_entries == (host_level ? 0U : 2U));
    CHECK(usage.host_entries == (host_level ? 2U : 0U));
    // The prompt's chunks from the tier, and chunk 0 once more at slots outside the batch (a forward
    // places those whole); `settle`: a read-back places the queue before the forward does.
    auto run = [&](bool settle) {
      for (int i = 0; i < 2; ++i)
        REQUIRE(
            gpu.write_kept_chunk_kv(keys[i], Prompt::begin(i), slots_of(Prompt::begin(i), Prompt::kChunk)));
      REQUIRE(gpu.write_kept_chunk_kv(keys[0], 0, slots_of(400, Prompt::kChunk)));
      if (settle) (void)gpu.read_chunk_kv(chunk0, 0, slots_of(400, Prompt::kChunk));
      SelectiveRecompute r = Prompt::recompute(0.15, 16, 2);
      ForwardBatch b = p.batch();
      b.recompute = &r;
      std::vector<float> logits(static_cast<std::size_t>(Prompt::kQuestion) * kVocab);
      gpu.forward(b, logits);
      return std::tuple(logits, gpu.read_chunk_kv(p.tokens, 0, all_slots),
                        gpu.read_chunk_kv(chunk0, 0, slots_of(400, Prompt::kChunk)));
    };
    const auto [queued, queued_cache, queued_far] = run(false);
    const auto [placed, placed_cache, placed_far] = run(true);
    CHECK(queued == placed);
    CHECK(queued_cache.data == placed_cache.data);
    CHECK(queued_far.data == placed_far.data);
    // Chunk 0 at its own position (slots 400...) holds the stored KV at every layer.
    CHECK(test::max_abs_diff(queued_far.data, p.chunks[0].data) <=
          storage_eps(cuda::DType::kBF16) * max_abs(p.chunks[0].data));
    // Both levels hold the same bytes: the same logits.
    if (host_level)
      CHECK(queued == first_logits);
    else
      first_logits = queued;
  }
}

TEST_CASE("GPU chunk tier's host level: demotion, placement from host memory, eviction", "[cuda][reuse]") {
  const TierChunks t(29);
  const auto& [model, a, b, c, big, entry] = t;
  const ChunkKey ka{1, 1}, kb{2, 2}, kc{3, 3}, kbig{4, 4};

  // A reference placed from the device level.
  cuda::CudaBackend ref(model, kBlocks, kBlock);
  ref.set_chunk_tier_capacity(entry);
  ref.keep_chunk_kv(ka, a);
  REQUIRE(ref.write_kept_chunk_kv(ka, 300, slots_of(300, 32)));
  const ChunkKv from_device = ref.read_chunk_kv(a.tokens, 300, slots_of(300, 32));

  cuda::CudaBackend gpu(model, kBlocks, kBlock);
  gpu.set_chunk_tier_capacity(entry * 3 / 2, entry * 5 / 2);  // one entry on the device, two on the host
  gpu.keep_chunk_kv(ka, a);
  gpu.keep_chunk_kv(kb, b);  // a moves to the host level
  auto usage = [&] {
    const cuda::ChunkTierUsage u = gpu.chunk_tier_usage();
    return std::array<std::size_t, 4>{u.device_entries, u.device_bytes, u.host_entries, u.host_bytes};
  };
  CHECK(usage() == std::array<std::size_t, 4>{1, entry, 1, entry});
  REQUIRE(gpu.write_kept_chunk_kv(ka, 300, slots_of(300, 32)));
  CHECK(gpu.read_chunk_kv(a.tokens, 300, slots_of(300, 32)).data == from_device.data);

  // c pushes b down to the host level, which is then full; big (too large for the device level) goes
  // to the host level, evicting both of its entries.
  gpu.keep_chunk_kv(kc, c);
  CHECK(usage() == std::array<std::size_t, 4>{1, entry, 2, 2 * entry});
  CHECK(gpu.keeps_chunk_kv(ka));
  CHECK(gpu.keeps_chunk_kv(kb));
  REQUIRE(gpu.write_kept_chunk_kv(kb, 0, slots_of(0, 32)));
  gpu.write_chunk_kv(b, 0, slots_of(400, 32));
  CHECK(gpu.read_chunk_kv(b.tokens, 0, slots_of(0, 32)).data ==
        gpu.read_chunk_kv(b.tokens, 0, slots_of(400, 32)).data);
  gpu.keep_chunk_kv(kbig, big);
  CHECK(usage() == std::array<std::size_t, 4>{1, entry, 1, 2 * entry});
  CHECK_FALSE(gpu.write_kept_chunk_kv(ka, 0, slots_of(0, 32)));
  CHECK_FALSE(gpu.write_kept_chunk_kv(kb, 0, slots_of(0, 32)));
  CHECK(gpu.write_kept_chunk_kv(kbig, 0, slots_of(0, 64)));
  CHECK(gpu.write_kept_chunk_kv(kc, 0, slots_of(100, 32)));

  // Shrinking the device level moves its entries down; with no host level they are dropped.
  gpu.set_chunk_tier_capacity(0, entry * 5 / 2);
  CHECK(usage() == std::array<std::size_t, 4>{0, 0, 1, entry});  // c came down, big was evicted for it
  CHECK(gpu.write_kept_chunk_kv(kc, 0, slots_of(100, 32)));
  gpu.set_chunk_tier_capacity(0, 0);
  CHECK(usage() == std::array<std::size_t, 4>{0, 0, 0, 0});
  CHECK_FALSE(gpu.write_kept_chunk_kv(kc, 0, slots_of(0, 32)));
}

TEST_CASE("GPU gradual filtering matches the CPU backend's", "[cuda][reuse]") {
  std::mt19937 rng(27);
  const int layers = 4;
  const auto model = gpu_model(rng, layers);
  const Prompt p(model, rng);
  CpuBackend cpu(model, kBlocks, kBlock);
  SelectiveRecompute rc = Prompt::recompute(0.15, 16, 1);
  rc.gradual = {2.0};
  SelectiveRecomputeReport cpu_report;
  const std::vector<float> cpu_sel = selective_logits(cpu, p, rc, cpu_report);
  // Stage 0 keeps ceil(0.3 * 96) = 29 rows of each chunk, the final stage 15 of those.
  REQUIRE(cpu_report.rows.size() == 2 * 15 + 32);
  for (const cuda::DType dtype : {cuda::DType::kBF16, cuda::DType::kF16}) {
    const std::string name(cuda::to_string(dtype));
    CAPTURE(name);
    cuda::CudaBackend gpu(model, kBlocks, kBlock, 0, dtype);
    SelectiveRecompute rg = Prompt::recompute(0.15, 16, 1);
    rg.gradual = {2.0};
    SelectiveRecomputeReport report;
    const std::vector<float> gpu_sel = selective_logits(gpu, p, rg, report);
    CHECK(report.rows.size() == cpu_report.rows.size());
    std::vector<std::int32_t> common;
    std::ranges::set_intersection(report.rows, cpu_report.rows, std::back_inserter(common));
    const cuda_test::Agreement a = cuda_test::compare(cpu_sel, gpu_sel, kVocab);
    std::printf("gradual {2}, %s: %zu rows (%zu as on the CPU); vs CPU top-1 %.3f, KL %.2e\n", name.c_str(),
                report.rows.size(), common.size(), a.top1, a.mean_kl);
    // The rows may differ where two deviations are within rounding (at either stage): the logits say
    // whether that matters.
    CHECK(a.top1 >= 0.95);
    CHECK(a.mean_kl < (dtype == cuda::DType::kBF16 ? 0.01 : 2e-3));
  }
  // Stages past the last layer are refused.
  cuda::CudaBackend gpu(model, kBlocks, kBlock);
  SelectiveRecompute bad = Prompt::recompute(0.15, 16, 1);
  bad.gradual = {2.0, 2.0, 2.0};
  SelectiveRecomputeReport unused;
  CHECK(error_code([&] { (void)selective_logits(gpu, p, bad, unused); }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("GPU selective forward down to one row, forward_sample, and a bad check layer", "[cuda][reuse]") {
  std::mt19937 rng(25);
  const int layers = 3;
  const auto model = gpu_model(rng, layers);
  // [chunk 0..96)[question 96]: at ratio 0 only the question row runs past the check layer.
  const std::vector<TokenId> tokens = random_tokens(rng, 97);
  const ChunkKv kv = standalone_kv(model, std::span(tokens).subspan(0, 96));
  SelectiveRecompute r;
  r.check_layer = 1;
  r.min_tokens = 0;
  r.chunks = {{0, 96, 0.0}};
  r.always = {{96, 97}};
  ForwardBatch b = prefill(tokens, 0);
  b.recompute = &r;

  CpuBackend cpu(model, kBlocks, kBlock);
  cpu.write_chunk_kv(kv, 0, slots_of(0, 96));
  std::vector<float> cpu_logits(kVocab), gpu_logits(kVocab);
  cpu.forward(b, cpu_logits);
  cuda::CudaBackend gpu(model, kBlocks, kBlock, 0, cuda::DType::kF16);
  gpu.write_chunk_kv(kv, 0, slots_of(0, 96));
  SelectiveRecomputeReport report;
  r.report = &report;
  gpu.forward(b, gpu_logits);
  CHECK(report.rows == std::vector<std::int32_t>{96});
  const cuda_test::Agreement a = cuda_test::compare(cpu_logits, gpu_logits, kVocab);
  std::printf("selective, one row kept, fp16: GPU vs CPU KL %.2e\n", a.mean_kl);
  CHECK(a.top1 == 1.0);
  CHECK(a.mean_kl < 0.01);

  // forward_sample on the same step: the greedy token is forward's argmax.
  gpu.write_chunk_kv(kv, 0, slots_of(0, 96));
  const std::vector<SampleRow> rows(1);
  std::vector<TokenId> token(1, -1);
  gpu.forward_sample(b, rows, token);
  CHECK(token[0] == std::max_element(gpu_logits.begin(), gpu_logits.end()) - gpu_logits.begin());

  r.check_layer = layers;
  CHECK(error_code([&] { gpu.forward(b, gpu_logits); }) == ErrorCode::kInvalidArgument);
  r.check_layer = layers - 1;
  CHECK_FALSE(error_code([&] { gpu.forward(b, gpu_logits); }).has_value());
}
