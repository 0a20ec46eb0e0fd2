// CPU reference ops against straightforward double-precision implementations on random inputs.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"
#include "compare.hpp"
#include "random_model.hpp"

namespace {

using chunkwise::Error;
using chunkwise::ErrorCode;
namespace cpu = chunkwise::cpu;

using chunkwise::test::random_vector;

using chunkwise::test::error_code_of;
using chunkwise::test::max_abs_diff;

}  // namespace

TEST_CASE("matmul_nt matches a naive product", "[cpu][matmul]") {
  std::mt19937 rng(1);
  struct Shape {
    std::int64_t m, k, n;
  };
  const std::vector<Shape> shapes = {{1, 576, 576}, {1, 576, 1536}, {1, 37, 91},    {1, 1536, 576},
                                     {3, 17, 5},    {16, 576, 192}, {33, 129, 65},  {128, 64, 300},
                                     {7, 1, 9},     {2, 300, 1},    {64, 576, 1031}};
  SECTION("random shapes, 1 and 2 threads") {
    for (const int threads : {1, 2}) {
      cpu::set_num_threads(threads);
      CHECK(cpu::num_threads() == threads);
      for (const Shape& s : shapes) {
        const auto x = random_vector(static_cast<std::size_t>(s.m * s.k), rng);
        const auto w = random_vector(static_cast<std::size_t>(s.n * s.k), rng);
        std::vector<float> y(static_cast<std::size_t>(s.m * s.n), std::numeric_limits<float>::quiet_NaN());
        cpu::matmul_nt(x.data(), s.m, s.k, w.data(), s.n, y.data());
        std::vector<double> ref(y.size());
        for (std::int64_t i = 0; i < s.m; ++i) {
          for (std::int64_t j = 0; j < s.n; ++j) {
            double acc = 0.0;
            for (std::int64_t p = 0; p < s.k; ++p)
              acc += static_cast<double>(x[i * s.k + p]) * w[j * s.k + p];
            ref[static_cast<std::size_t>(i * s.n + j)] = acc;
          }
        }
        INFO("m=" << s.m << " k=" << s.k << " n=" << s.n << " threads=" << threads);
        // fp32 dot products of k terms in [-1, 1]: rounding grows like sqrt(k) in practice, k at worst.
        CHECK(max_abs_diff(y, ref) <= 1e-5 * static_cast<double>(s.k));
      }
    }
    cpu::set_num_threads(0);
    CHECK(cpu::num_threads() >= 1);
  }
  SECTION("k = 0 gives zeros, m = 0 writes nothing") {
    std::vector<float> y(6, 1.0f);
    cpu::matmul_nt(nullptr, 2, 0, nullptr, 3, y.data());
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return v == 0.0f; }));
    cpu::matmul_nt(nullptr, 0, 4, nullptr, 3, nullptr);
  }
  SECTION("bad thread count") {
    CHECK(error_code_of([] { cpu::set_num_threads(-1); }) == ErrorCode::kInvalidArgument);
  }
}

TEST_CASE("rms_norm matches the Llama formula", "[cpu][norm]") {
  std::mt19937 rng(2);
  for (const std::int64_t dim : {576, 64, 7}) {
    const std::int64_t rows = 13;
    const auto x = random_vector(static_cast<std::size_t>(rows * dim), rng, -3.0f, 3.0f);
    const auto w = random_vector(static_cast<std::size_t>(dim), rng, 0.5f, 1.5f);
    const float eps = 1e-5f;
    std::vector<float> y(x.size());
    cpu::rms_norm(x.data(), w.data(), rows, dim, eps, y.data());
    std::vector<double> ref(x.size());
    for (std::int64_t r = 0; r < rows; ++r) {
      double ss = 0.0;
      for (std::int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
      const double inv = 1.0 / std::sqrt(ss / static_cast<double>(dim) + eps);
      for (std::int64_t i = 0; i < dim; ++i) ref[r * dim + i] = x[r * dim + i] * inv * w[i];
    }
    INFO("dim=" << dim);
    CHECK(max_abs_diff(y, ref) <= 1e-5);
  }
  SECTION("a zero row stays zero (eps keeps it finite)") {
    const std::vector<float> x(8, 0.0f), w(8, 1.0f);
    std::vector<float> y(8, 1.0f);
    cpu::rms_norm(x.data(), w.data(), 1, 8, 1e-6f, y.data());
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return v == 0.0f; }));
  }
}

TEST_CASE("rope_inv_freq: default and Llama-3 scaling", "[cpu][rope]") {
  SECTION("SmolLM2: theta 1e5, head_dim 64, no scaling") {
    const auto f = cpu::rope_inv_freq(64, 100000.0f, {});
    REQUIRE(f.size() == 32);
    // Python: 1.0 / (100000.0 ** ((2 * i) / 64))
    const std::vector<std::pair<int, double>> expected = {
        {0, 1.0}, {1, 0.6978305848598664}, {16, 0.003162277660168379}, {31, 1.4330125702369627e-05}};
    for (const auto& [i, v] : expected) {
      INFO("i=" << i);
      CHECK(std::abs(f[static_cast<std::size_t>(i)] - v) <= 1e-6 * v);
    }
  }
  SECTION("Llama-3.1: theta 5e5, head_dim 128, factor 8, low 1, high 4, original 8192") {
    chunkwise::RopeScaling sc;
    sc.enabled = true;
    sc.factor = 8.0f;
    sc.low_freq_factor = 1.0f;
    sc.high_freq_factor = 4.0f;
    sc.original_max_position = 8192;
    const auto f = cpu::rope_inv_freq(128, 500000.0f, sc);
    REQUIRE(f.size() == 64);
    // Expected values from the formula of HF transformers' _compute_llama3_parameters, evaluated in
    // Python doubles:
    //   inv = 1 / 500000 ** (2 * i / 128); wl = 2 * math.pi / inv
    //   wl < 8192 / 4: inv;  wl > 8192 / 1: inv / 8;
    //   else s = (8192 / wl - 1) / (4 - 1); (1 - s) * inv / 8 + s * inv
    // i <= 28 are high frequency (unchanged), 29..34 smoothed, >= 35 low frequency (divided by 8).
    const std::vector<std::pair<int, double>> expected = {{0, 1.0},
                                                          {1, 0.8146172338565447},
                                                          {20, 0.016560440080994446},
                                                          {28, 0.0032114459947525913},
                                                          {29, 0.002166570763503359},
                                                          {30, 0.0013718935677611381},
                                                          {32, 0.0005248461609929547},
                                                          {34, 0.00017850781276799638},
                                                          {35, 9.556212353964683e-05},
                                                          {40, 3.428102195952591e-05},
                                                          {63, 3.068925988914511e-07}};
    for (const auto& [i, v] : expected) {
      INFO("i=" << i);
      // float32 evaluation as in torch: a few ulp of float.
      CHECK(std::abs(f[static_cast<std::size_t>(i)] - v) <= 2e-6 * v);
    }
  }
  SECTION("bad arguments") {
    CHECK(error_code_of([] { (void)cpu::rope_inv_freq(63, 1e4f, {}); }) == ErrorCode::kInvalidArgument);
    CHECK(error_code_of([] { (void)cpu::rope_inv_freq(64, -1.0f, {}); }) == ErrorCode::kInvalidArgument);
  }
}

TEST_CASE("rope rotates half pairs", "[cpu][rope]") {
  SECTION("hand-computed: head_dim 4, theta 1e4 -> inv_freq {1, 0.01}") {
    const auto f = cpu::rope_inv_freq(4, 10000.0f, {});
    REQUIRE(f.size() == 2);
    CHECK(std::abs(f[1] - 0.01f) <= 1e-8f);
    // Two rows (positions 1 and 7), one head each, x = {1, 2, 3, 4}. Expected from Python:
    //   a0 = pos * 1.0, a1 = pos * 0.01
    //   {x0 cos a0 - x2 sin a0, x1 cos a1 - x3 sin a1, x2 cos a0 + x0 sin a0, x3 cos a1 + x1 sin a1}
    std::vector<float> x = {1, 2, 3, 4, 1, 2, 3, 4};
    const std::vector<std::int32_t> pos = {1, 7};
    cpu::rope(x.data(), 2, 1, 4, pos.data(), f);
    const std::vector<double> ref = {-1.9841106485555495, 1.959900667496664,   2.4623779024123156,
                                     4.019799668334994,   -1.2170575418130625, 1.7153306111564282,
                                     2.9186933617487028,  4.130089695688184};
    CHECK(max_abs_diff(x, ref) <= 2e-6);
  }
  SECTION("random heads and positions against a naive rotation; position 0 is the identity") {
    std::mt19937 rng(3);
    for (const int head_dim : {64, 128}) {
      const int n_heads = 3;
      const std::int64_t rows = 9;
      const auto f = cpu::rope_inv_freq(head_dim, 100000.0f, {});
      auto x = random_vector(static_cast<std::size_t>(rows * n_heads * head_dim), rng);
      const auto x0 = x;
      const std::vector<std::int32_t> pos = {0, 1, 2, 15, 16, 100, 1023, 4095, 8191};
      cpu::rope(x.data(), rows, n_heads, head_dim, pos.data(), f);
      std::vector<double> ref(x.size());
      const int half = head_dim / 2;
      for (std::int64_t r = 0; r < rows; ++r) {
        for (int h = 0; h < n_heads; ++h) {
          const std::int64_t base = (r * n_heads + h) * head_dim;
          for (int i = 0; i < half; ++i) {
            // The angle is rounded to float as HF does; only cos/sin are taken in double.
            const double a = static_cast<float>(f[static_cast<std::size_t>(i)] * static_cast<float>(pos[r]));
            const double x1 = x0[base + i], x2 = x0[base + i + half];
            ref[base + i] = x1 * std::cos(a) - x2 * std::sin(a);
            ref[base + i + half] = x2 * std::cos(a) + x1 * std::sin(a);
          }
        }
      }
      INFO("head_dim=" << head_dim);
      CHECK(max_abs_diff(x, ref) <= 1e-6);
      for (int i = 0; i < n_heads * head_dim; ++i) CHECK(x[i] == x0[i]);
    }
  }
}

TEST_CASE("swiglu is silu(gate) * up", "[cpu][swiglu]") {
  std::mt19937 rng(4);
  const std::size_t n = 1000;
  const auto g = random_vector(n, rng, -8.0f, 8.0f);
  const auto u = random_vector(n, rng, -2.0f, 2.0f);
  std::vector<float> y(n);
  cpu::swiglu(g.data(), u.data(), static_cast<std::int64_t>(n), y.data());
  std::vector<double> ref(n);
  for (std::size_t i = 0; i < n; ++i) ref[i] = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
  CHECK(max_abs_diff(y, ref) <= 1e-5);
}

TEST_CASE("embed copies rows and rejects bad ids", "[cpu][embed]") {
  const std::int64_t vocab = 5, dim = 3;
  std::vector<float> table(static_cast<std::size_t>(vocab * dim));
  std::iota(table.begin(), table.end(), 0.0f);
  const std::vector<chunkwise::TokenId> ids = {4, 0, 2, 2};
  std::vector<float> out(ids.size() * dim);
  cpu::embed(table.data(), vocab, dim, ids.data(), static_cast<std::int64_t>(ids.size()), out.data());
  const std::vector<float> expected = {12, 13, 14, 0, 1, 2, 6, 7, 8, 6, 7, 8};
  CHECK(out == expected);

  for (const chunkwise::TokenId bad : {-1, 5, 1000000}) {
    const std::vector<chunkwise::TokenId> bad_ids = {1, bad};
    std::vector<float> untouched(6, -7.0f);
    try {
      cpu::embed(table.data(), vocab, dim, bad_ids.data(), 2, untouched.data());
      FAIL("no error for id " << bad);
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kTokenOutOfRange);
      const std::string what = e.what();
      CHECK(what.find(std::to_string(bad)) != std::string::npos);
      CHECK(what.find(std::to_string(vocab)) != std::string::npos);
    }
    CHECK(std::all_of(untouched.begin(), untouched.end(), [](float v) { return v == -7.0f; }));
  }
}

TEST_CASE("write_kv stores rows at block * block_size + offset", "[cpu][attention]") {
  const int block_size = 4, n_kv = 2, d = 3, n_blocks = 3;
  std::vector<float> k(static_cast<std::size_t>(n_blocks * block_size * n_kv * d), 0.0f);
  std::vector<float> v(k.size(), 0.0f);
  cpu::PagedKv cache{k.data(), v.data(), block_size, n_kv, d};
  const std::vector<std::int64_t> slots = {2 * block_size + 1, 0 * block_size + 3};
  std::vector<float> kn(2 * n_kv * d), vn(2 * n_kv * d);
  std::iota(kn.begin(), kn.end(), 1.0f);
  std::iota(vn.begin(), vn.end(), 100.0f);
  cpu::write_kv(cache, kn.data(), vn.data(), slots.data(), 2);
  for (int r = 0; r < 2; ++r) {
    const std::int64_t block = slots[r] / block_size, off = slots[r] % block_size;
    for (int h = 0; h < n_kv; ++h) {
      for (int x = 0; x < d; ++x) {
        const std::int64_t at = block * cache.block_stride() + (off * n_kv + h) * d + x;
        CHECK(k[at] == kn[(r * n_kv + h) * d + x]);
        CHECK(v[at] == vn[(r * n_kv + h) * d + x]);
      }
    }
  }
  CHECK(std::count(k.begin(), k.end(), 0.0f) == static_cast<long>(k.size() - kn.size()));
  const std::int64_t bad = -1;
  CHECK(error_code_of([&] { cpu::write_kv(cache, kn.data(), vn.data(), &bad, 1); }) ==
        ErrorCode::kInvalidArgument);
}

namespace {

// One sequence of a test batch: kv_len tokens of contiguous K/V, and query rows at positions
// [first_query, kv_len).
struct TestSeq {
  int kv_len;
  int first_query;
  int spare_pages;  // pages beyond what kv_len needs (capacity > kv_len is legal)
};

void run_attention_case(int block_size, int n_heads, int n_kv, int d, const std::vector<TestSeq>& seqs,
                        std::uint32_t seed) {
  std::mt19937 rng(seed);
  const int group = n_heads / n_kv;
  const std::int64_t kv_dim = static_cast<std::int64_t>(n_kv) * d;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  // Contiguous per-sequence K/V: the dense reference reads these.
  std::vector<std::vector<float>> kd, vd;
  int total_pages = 0;
  for (const TestSeq& s : seqs) {
    kd.push_back(random_vector(static_cast<std::size_t>(s.kv_len * kv_dim), rng));
    vd.push_back(random_vector(static_cast<std::size_t>(s.kv_len * kv_dim), rng));
    total_pages += (s.kv_len + block_size - 1) / block_size + s.spare_pages;
  }
  // A pool with unused pages, handed out in shuffled order; unused memory is NaN so any read of a
  // slot outside a sequence's cache poisons the output.
  const int pool_pages = total_pages + 5;
  std::vector<std::int32_t> free_pages(static_cast<std::size_t>(pool_pages));
  std::iota(free_pages.begin(), free_pages.end(), 0);
  std::shuffle(free_pages.begin(), free_pages.end(), rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> kpool(static_cast<std::size_t>(pool_pages) * block_size * kv_dim, nan);
  std::vector<float> vpool(kpool.size(), nan);
  const cpu::PagedKv cache{kpool.data(), vpool.data(), block_size, n_kv, d};

  std::vector<std::int32_t> query_start = {0}, page_start = {0}, pages, kv_len, q_pos;
  std::size_t next_free = 0;
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    const int n_pages = (seqs[s].kv_len + block_size - 1) / block_size + seqs[s].spare_pages;
    std::vector<std::int64_t> slots;
    for (int p = 0; p < n_pages; ++p) pages.push_back(free_pages[next_free++]);
    for (int t = 0; t < seqs[s].kv_len; ++t) {
      const std::int64_t page = pages[static_cast<std::size_t>(page_start.back() + t / block_size)];
      slots.push_back(page * block_size + t % block_size);
    }
    cpu::write_kv(cache, kd[s].data(), vd[s].data(), slots.data(), static_cast<std::int64_t>(slots.size()));
    page_start.push_back(static_cast<std::int32_t>(pages.size()));
    for (int p = seqs[s].first_query; p < seqs[s].kv_len; ++p) q_pos.push_back(p);
    query_start.push_back(static_cast<std::int32_t>(q_pos.size()));
    kv_len.push_back(seqs[s].kv_len);
  }
  const std::int64_t rows = static_cast<std::int64_t>(q_pos.size());
  const auto q = random_vector(static_cast<std::size_t>(rows * n_heads * d), rng, -2.0f, 2.0f);
  std::vector<float> out(q.size(), nan);
  const cpu::AttentionBatch batch{query_start, page_start, pages, kv_len, q_pos};
  cpu::paged_attention(q.data(), cache, batch, n_heads, scale, out.data());

  // Dense reference in double.
  std::vector<double> ref(out.size());
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    for (std::int32_t r = query_start[s]; r < query_start[s + 1]; ++r) {
      const int pos = q_pos[static_cast<std::size_t>(r)];
      for (int h = 0; h < n_heads; ++h) {
        const int kvh = h / group;
        const float* qv = q.data() + (static_cast<std::int64_t>(r) * n_heads + h) * d;
        std::vector<double> p(static_cast<std::size_t>(pos + 1));
        double mx = -1e300;
        for (int j = 0; j <= pos; ++j) {
          const float* kv = kd[s].data() + j * kv_dim + kvh * d;
          double dot = 0.0;
          for (int x = 0; x < d; ++x) dot += static_cast<double>(qv[x]) * kv[x];
          p[static_cast<std::size_t>(j)] = dot * scale;
          mx = std::max(mx, dot * scale);
        }
        double sum = 0.0;
        for (double& e : p) sum += (e = std::exp(e - mx));
        double* o = ref.data() + (static_cast<std::int64_t>(r) * n_heads + h) * d;
        for (int x = 0; x < d; ++x) {
          double acc = 0.0;
          for (int j = 0; j <= pos; ++j)
            acc += p[static_cast<std::size_t>(j)] * vd[s][j * kv_dim + kvh * d + x];
          o[x] = acc / sum;
        }
      }
    }
  }
  INFO("block_size=" << block_size << " n_heads=" << n_heads << " n_kv=" << n_kv << " head_dim=" << d);
  CHECK(max_abs_diff(out, ref) <= 2e-5);

  // The result does not depend on the thread count (work items are computed the same way by any thread).
  cpu::set_num_threads(1);
  std::vector<float> out1(q.size(), nan);
  cpu::paged_attention(q.data(), cache, batch, n_heads, scale, out1.data());
  cpu::set_num_threads(0);
  CHECK(out1 == out);
}

}  // namespace

TEST_CASE("paged_attention matches dense causal attention on a ragged batch", "[cpu][attention]") {
  // Mixed batch: prefill from 0, chunked prefill over a cached prefix, decodes (one row each,
  // including one at position 0), and a long chunk that spans several query tiles and key chunks.
  const std::vector<TestSeq> seqs = {{37, 0, 0}, {101, 100, 1}, {80, 50, 0},
                                     {1, 0, 0},  {200, 130, 2}, {64, 63, 0}};
  SECTION("block size 16 and 8, GQA groups 3 and 1, head_dim 64 and 128") {
    for (const int block_size : {16, 8}) {
      for (const auto& [n_heads, n_kv] : {std::pair{9, 3}, std::pair{4, 4}}) {
        for (const int d : {64, 128}) {
          run_attention_case(block_size, n_heads, n_kv, d, seqs,
                             static_cast<std::uint32_t>(block_size * 1000 + n_heads * 10 + d));
        }
      }
    }
  }
  SECTION("one long prefill") {
    run_attention_case(16, 9, 3, 64, {{300, 0, 0}}, 7);
  }
  SECTION("sixteen decodes") {
    std::vector<TestSeq> decodes;
    for (int i = 0; i < 16; ++i) decodes.push_back({1 + 37 * i, 37 * i, i % 2});
    run_attention_case(16, 9, 3, 64, decodes, 8);
  }
}

TEST_CASE("paged_attention rejects inconsistent batch metadata", "[cpu][attention]") {
  const int bs = 4, n_kv = 1, d = 4, n_heads = 2;
  std::vector<float> k(static_cast<std::size_t>(4 * bs * n_kv * d), 0.0f), v(k.size(), 0.0f);
  const cpu::PagedKv cache{k.data(), v.data(), bs, n_kv, d};
  std::vector<float> q(static_cast<std::size_t>(2 * n_heads * d), 0.5f), out(q.size());
  const std::vector<std::int32_t> qs = {0, 2}, ps = {0, 2}, pages = {3, 1}, len = {6}, pos = {4, 5};

  auto run = [&](const cpu::AttentionBatch& b, int heads) {
    return error_code_of([&] { cpu::paged_attention(q.data(), cache, b, heads, 1.0f, out.data()); });
  };
  // The valid batch runs; uniform V of zero gives zero output.
  cpu::paged_attention(q.data(), cache, {qs, ps, pages, len, pos}, n_heads, 1.0f, out.data());
  CHECK(std::all_of(out.begin(), out.end(), [](float x) { return x == 0.0f; }));

  const std::vector<std::int32_t> short_ps = {0}, long_len = {6, 6}, big_len = {9}, bad_pos = {4, 6},
                                  few_pos = {4}, bad_qs = {1, 2}, neg_pages = {3, -1}, few_pages = {3};
  CHECK(run({qs, short_ps, pages, len, pos}, n_heads) == ErrorCode::kInvalidArgument);
  CHECK(run({qs, ps, pages, long_len, pos}, n_heads) == ErrorCode::kInvalidArgument);
  CHECK(run({qs, ps, pages, big_len, pos}, n_heads) == ErrorCode::kInvalidArgument);  // 9 > 2 pages * 4
  CHECK(run({qs, ps, pages, len, bad_pos}, n_heads) == ErrorCode::kInvalidArgument);  // position 6 >= kv_len
  CHECK(run({qs, ps, pages, len, few_pos}, n_heads) == ErrorCode::kInvalidArgument);
  CHECK(run({bad_qs, ps, pages, len, pos}, n_heads) == ErrorCode::kInvalidArgument);
  CHECK(run({qs, ps, neg_pages, len, pos}, n_heads) == ErrorCode::kInvalidArgument);
  CHECK(run({qs, ps, few_pages, len, pos}, n_heads) == ErrorCode::kInvalidArgument);
  CHECK(run({qs, ps, pages, len, pos}, 0) == ErrorCode::kInvalidArgument);
  const cpu::PagedKv two_kv{k.data(), v.data(), bs, 2, d / 2};  // 3 query heads over 2 KV heads
  CHECK(error_code_of([&] {
          cpu::paged_attention(q.data(), two_kv, {qs, ps, pages, len, pos}, 3, 1.0f, out.data());
        }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("paged_attention rows are bitwise independent of the batch they run in", "[cpu][attention]") {
  // One sequence of 150 cached tokens; its rows at positions 60..149 computed (a) as one chunk,
  // (b) as chunks of 1, 7 and 82 rows in separate calls, (c) inside a batch with other sequences
  // (different tiling and work order). Every output row must be identical, not only close.
  std::mt19937 rng(21);
  const int bs = 16, n_kv = 3, n_heads = 9, d = 64, len = 150, first = 60;
  const int kv_dim = n_kv * d;
  const int n_pages = 40;
  auto kpool = random_vector(static_cast<std::size_t>(n_pages * bs * kv_dim), rng);
  auto vpool = random_vector(kpool.size(), rng);
  const cpu::PagedKv cache{kpool.data(), vpool.data(), bs, n_kv, d};
  const std::vector<std::int32_t> pages_a = {7, 3, 12, 0, 25, 9, 31, 18, 4, 22};  // 160 slots
  const std::vector<std::int32_t> pages_b = {1, 2, 5};                            // another sequence
  const int rows = len - first;
  const auto q = random_vector(static_cast<std::size_t>(rows * n_heads * d), rng, -3.0f, 3.0f);
  const std::size_t row_floats = static_cast<std::size_t>(n_heads) * d;

  auto run_alone = [&](int r0, int r1) {
    std::vector<std::int32_t> qs = {0, r1 - r0}, ps = {0, static_cast<std::int32_t>(pages_a.size())};
    std::vector<std::int32_t> kv = {first + r1}, pos;
    for (int r = r0; r < r1; ++r) pos.push_back(first + r);
    std::vector<float> out(static_cast<std::size_t>(r1 - r0) * row_floats);
    cpu::paged_attention(q.data() + r0 * row_floats, cache, {qs, ps, pages_a, kv, pos}, n_heads, 0.125f,
                         out.data());
    return out;
  };
  const std::vector<float> whole = run_alone(0, rows);

  std::vector<float> chunked;
  for (const auto& [r0, r1] : {std::pair{0, 1}, std::pair{1, 8}, std::pair{8, rows}}) {
    const auto part = run_alone(r0, r1);
    chunked.insert(chunked.end(), part.begin(), part.end());
  }
  CHECK(chunked == whole);

  // In a batch: a decode of sequence b first, then our rows, then a second decode of b.
  std::vector<std::int32_t> qs = {0, 1, 1 + rows, 2 + rows}, ps = {0, 3, 13, 16};
  std::vector<std::int32_t> pages = pages_b;
  pages.insert(pages.end(), pages_a.begin(), pages_a.end());
  pages.insert(pages.end(), pages_b.begin(), pages_b.end());
  std::vector<std::int32_t> kv = {40, len, 33}, pos = {39};
  for (int r = 0; r < rows; ++r) pos.push_back(first + r);
  pos.push_back(32);
  std::vector<float> qb(static_cast<std::size_t>(rows + 2) * row_floats, 0.25f);
  std::copy(q.begin(), q.end(), qb.begin() + static_cast<std::ptrdiff_t>(row_floats));
  std::vector<float> out(qb.size());
  cpu::paged_attention(qb.data(), cache, {qs, ps, pages, kv, pos}, n_heads, 0.125f, out.data());
  const std::vector<float> ours(out.begin() + static_cast<std::ptrdiff_t>(row_floats),
                                out.end() - static_cast<std::ptrdiff_t>(row_floats));
  CHECK(ours == whole);
}

TEST_CASE("paged_attention lets a NaN in the cache poison exactly the rows that see it", "[cpu][attention]") {
  std::mt19937 rng(31);
  const int bs = 8, n_kv = 2, n_heads = 4, d = 64, len = 100, bad = 50;
  const int kv_dim = n_kv * d;
  auto kpool = random_vector(static_cast<std::size_t>(16 * bs * kv_dim), rng);
  auto vpool = random_vector(kpool.size(), rng);
  const cpu::PagedKv cache{kpool.data(), vpool.data(), bs, n_kv, d};
  std::vector<std::int32_t> pages(13);
  std::iota(pages.begin(), pages.end(), 2);
  // Row bad of kv head 1: the K element x = 3.
  kpool[static_cast<std::size_t>(pages[bad / bs] * cache.block_stride() + (bad % bs) * kv_dim + d + 3)] =
      std::numeric_limits<float>::quiet_NaN();
  // Sequence 0: prefill of all 100 positions (wide path); sequence 1: a decode at 99 (narrow path).
  std::vector<std::int32_t> qs = {0, len, len + 1}, ps = {0, 13, 26}, kv = {len, len}, pos;
  std::vector<std::int32_t> all_pages = pages;
  all_pages.insert(all_pages.end(), pages.begin(), pages.end());
  for (int p = 0; p < len; ++p) pos.push_back(p);
  pos.push_back(len - 1);
  const auto q = random_vector(static_cast<std::size_t>((len + 1) * n_heads * d), rng);
  std::vector<float> out(q.size());
  cpu::paged_attention(q.data(), cache, {qs, ps, all_pages, kv, pos}, n_heads, 0.125f, out.data());
  for (int r = 0; r <= len; ++r) {
    for (int h = 0; h < n_heads; ++h) {
      const float* o = out.data() + (static_cast<std::ptrdiff_t>(r) * n_heads + h) * d;
      const bool sees_nan = h / (n_heads / n_kv) == 1 && pos[static_cast<std::size_t>(r)] >= bad;
      const bool any_nan = std::any_of(o, o + d, [](float x) { return std::isnan(x); });
      INFO("row " << r << " head " << h);
      CHECK(any_nan == sees_nan);
    }
  }
}
