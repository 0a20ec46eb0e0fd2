// chunkwise::cuda::PagedAttention against the CPU reference (cpu::paged_attention) on the same
// 16-bit inputs, and block-sparse masks against a double-precision masked reference, for both
// storage types (bf16: relative error below 1e-2; fp16, 3 more mantissa bits: below 2e-3).
// Every case: fresh random inputs, random page tables (shuffled block ids in a pool larger than
// needed, unused slots and slots past kv_len poisoned with NaN so that a stray read shows), the
// output poisoned with NaN before every run. Each case prints one line per configuration: shape,
// plan, max abs error, relative error ||out - ref|| / ||ref|| (all rows, decode rows, prefill
// rows), unwritten (NaN) elements and the worst element.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/attention.hpp"
#include "chunkwise/cuda/common.hpp"
#include "cuda/attention_fixture.hpp"

namespace {

using chunkwise::Error;
using chunkwise::ErrorCode;
using chunkwise::cuda::AttentionPlanOptions;
using chunkwise::cuda::BasicPagedKvView;
using chunkwise::cuda::bf16;
using chunkwise::cuda::BlockSparseMaskView;
using chunkwise::cuda::check_cuda;
using chunkwise::cuda::DeviceBuffer;
using chunkwise::cuda::f16;
using chunkwise::cuda::PagedAttention;
using chunkwise::cuda::attention_fixture::add_softmax_reference;
using chunkwise::cuda::attention_fixture::Mask;
using chunkwise::cuda::attention_fixture::PagedBatch;
using chunkwise::cuda::attention_fixture::Stream;
using chunkwise::cuda::attention_fixture::to_device;

// Relative error bound against the references: a few times the rounding of P and of the output.
template <class T>
constexpr double kTol = std::is_same_v<T, bf16> ? 1e-2 : 2e-3;

template <class T>
const char* type_name() {
  return std::is_same_v<T, bf16> ? "bf16" : "fp16";
}

template <class T>
std::vector<float> download_f32(const DeviceBuffer<T>& d, std::size_t n) {
  std::vector<T> h(n);
  check_cuda(cudaMemcpy(h.data(), d.get(), n * sizeof(T), cudaMemcpyDeviceToHost), "download");
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(h[i]);
  return out;
}

struct Shape {
  int n_heads, n_kv, d, bs;
};
// `rows` query rows at positions start .. start + rows - 1; the cache holds start + rows tokens.
struct Seq {
  int rows, start;
};

// One batch: metadata, inputs (in the storage type T and as fp32 values) and device copies.
template <class T>
struct Problem : PagedBatch {
  Shape sh{};
  std::vector<Seq> seqs;
  int num_blocks = 0;
  std::vector<T> q, k, v;
  std::vector<float> qf, kf, vf;
  DeviceBuffer<T> dq, dk, dv, dout;

  [[nodiscard]] std::size_t out_elems() const {
    return static_cast<std::size_t>(rows()) * static_cast<std::size_t>(sh.n_heads) *
           static_cast<std::size_t>(sh.d);
  }
  [[nodiscard]] BasicPagedKvView<T> kv() const { return {dk.get(), dv.get(), sh.bs, sh.n_kv, sh.d}; }
  [[nodiscard]] std::int64_t slot_offset(int s,
                                         int p) const {  // element offset of token p of sequence s, head 0
    return static_cast<std::int64_t>(slot(s, p)) * sh.n_kv * sh.d;
  }
};

template <class T>
Problem<T> make_problem(const Shape& sh, const std::vector<Seq>& seqs, std::uint32_t seed) {
  Problem<T> pr;
  pr.sh = sh;
  pr.seqs = seqs;
  pr.block_size = sh.bs;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const Seq& s : seqs) pr.add(s.rows, s.start);
  const int needed = pr.ps.back();
  pr.num_blocks = needed + needed / 4 + 3;
  std::vector<std::int32_t> ids(static_cast<std::size_t>(pr.num_blocks));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  pr.pages.assign(ids.begin(), ids.begin() + needed);

  // The pool: NaN everywhere (unused blocks, slots past kv_len), random values in the used slots.
  const std::size_t pool = static_cast<std::size_t>(pr.num_blocks) * sh.bs * sh.n_kv * sh.d;
  const T poison(std::numeric_limits<float>::quiet_NaN());
  pr.k.assign(pool, poison);
  pr.v.assign(pool, poison);
  const int kv_dim = sh.n_kv * sh.d;
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    for (int p = 0; p < pr.kvl[s]; ++p) {
      const std::int64_t off = pr.slot_offset(static_cast<int>(s), p);
      for (int x = 0; x < kv_dim; ++x) {
        pr.k[static_cast<std::size_t>(off + x)] = T(normal(rng));
        pr.v[static_cast<std::size_t>(off + x)] = T(normal(rng));
      }
    }
  }
  pr.q.resize(pr.out_elems());
  for (auto& x : pr.q) x = T(normal(rng));
  pr.qf.resize(pr.q.size());
  pr.kf.resize(pool);
  pr.vf.resize(pool);
  for (std::size_t i = 0; i < pr.q.size(); ++i) pr.qf[i] = static_cast<float>(pr.q[i]);
  for (std::size_t i = 0; i < pool; ++i) {
    pr.kf[i] = static_cast<float>(pr.k[i]);
    pr.vf[i] = static_cast<float>(pr.v[i]);
  }
  pr.dq = to_device(pr.q);
  pr.dk = to_device(pr.k);
  pr.dv = to_device(pr.v);
  pr.dout = DeviceBuffer<T>(std::max<std::size_t>(pr.out_elems(), 1));
  pr.upload();
  return pr;
}

template <class T>
float default_scale(const Problem<T>& pr) {
  return 1.0f / std::sqrt(static_cast<float>(pr.sh.d));
}

template <class T>
std::vector<float> cpu_reference(const Problem<T>& pr) {
  chunkwise::cpu::PagedKv cache;
  cache.k = const_cast<float*>(pr.kf.data());
  cache.v = const_cast<float*>(pr.vf.data());
  cache.block_size = pr.sh.bs;
  cache.n_kv_heads = pr.sh.n_kv;
  cache.head_dim = pr.sh.d;
  const chunkwise::cpu::AttentionBatch b{pr.qs, pr.ps, pr.pages, pr.kvl, pr.pos};
  std::vector<float> out(pr.out_elems());
  chunkwise::cpu::paged_attention(pr.qf.data(), cache, b, pr.sh.n_heads, default_scale(pr), out.data());
  return out;
}

// Poisons out (NaN), runs, returns out as floats.
template <class T>
std::vector<float> run_gpu(Problem<T>& pr, PagedAttention& attn, const BlockSparseMaskView* mask,
                           cudaStream_t stream) {
  check_cuda(cudaMemsetAsync(pr.dout.get(), 0xff, pr.out_elems() * sizeof(T), stream), "poison out");
  attn.run(pr.dq.get(), pr.kv(), pr.view(), mask, default_scale(pr), pr.dout.get(), stream);
  check_cuda(cudaStreamSynchronize(stream), "attention run");
  return download_f32(pr.dout, pr.out_elems());
}

struct Errors {
  double max_abs = 0, rel = 0, rel_decode = 0, rel_prefill = 0;
  std::size_t unwritten = 0;
  std::string worst;
};

template <class T, class Ref>
Errors compare(const Problem<T>& pr, const std::vector<float>& got, const std::vector<Ref>& ref) {
  Errors e;
  double num[2] = {0, 0}, den[2] = {0, 0};
  std::size_t worst_i = 0;
  const std::size_t row_elems = static_cast<std::size_t>(pr.sh.n_heads) * pr.sh.d;
  std::vector<int> row_kind(static_cast<std::size_t>(pr.rows()));  // 0 decode, 1 prefill
  for (std::size_t s = 0; s < pr.seqs.size(); ++s)
    for (int r = pr.qs[s]; r < pr.qs[s + 1]; ++r)
      row_kind[static_cast<std::size_t>(r)] = pr.seqs[s].rows > 1 ? 1 : 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double r = static_cast<double>(ref[i]);
    const int kind = row_kind[i / row_elems];
    if (std::isnan(got[i])) {
      ++e.unwritten;
      num[kind] += r * r + 1.0;
      den[kind] += r * r;
      continue;
    }
    const double diff = std::fabs(static_cast<double>(got[i]) - r);
    if (diff > e.max_abs) {
      e.max_abs = diff;
      worst_i = i;
    }
    num[kind] += diff * diff;
    den[kind] += r * r;
  }
  auto rel = [](double n, double d) { return d > 0 ? std::sqrt(n / d) : std::sqrt(n); };
  e.rel = rel(num[0] + num[1], den[0] + den[1]);
  e.rel_decode = rel(num[0], den[0]);
  e.rel_prefill = rel(num[1], den[1]);
  const std::size_t row = worst_i / row_elems;
  const std::size_t head = (worst_i % row_elems) / static_cast<std::size_t>(pr.sh.d);
  char buf[200];
  std::snprintf(buf, sizeof buf, "worst: row %zu (pos %d) head %zu dim %zu got %.5g ref %.5g", row,
                pr.pos.empty() ? -1 : pr.pos[row], head, worst_i % static_cast<std::size_t>(pr.sh.d),
                static_cast<double>(got[worst_i]), static_cast<double>(ref[worst_i]));
  e.worst = buf;
  return e;
}

template <class T>
std::string describe(const Problem<T>& pr) {
  int dec = 0, pre = 0;
  for (const Seq& s : pr.seqs) (s.rows > 1 ? pre : dec) += 1;
  char buf[200];
  std::snprintf(buf, sizeof buf, "%s h%d/%d d%d bs%d seqs %zu (decode %d, prefill %d) rows %d",
                type_name<T>(), pr.sh.n_heads, pr.sh.n_kv, pr.sh.d, pr.sh.bs, pr.seqs.size(), dec, pre,
                pr.rows());
  return buf;
}

std::string describe(const PagedAttention& attn) {
  const auto& s = attn.stats();
  char buf[200];
  std::snprintf(
      buf, sizeof buf,
      "plan: tile %d %s prefill_ctas/head %d psplit %d decode_ctas/kvhead %d dsplit %d merge %d launches %d",
      s.prefill_tile_rows, s.prefill_wgmma ? "wgmma" : "mma.sync", s.prefill_items, s.prefill_splits,
      s.decode_items, s.decode_splits, s.merge_rows, s.launches);
  return buf;
}

template <class T>
void report(const std::string& name, const std::string& cfg, const Problem<T>& pr, const PagedAttention& attn,
            const Errors& e) {
  std::printf(
      "[attention] %-28s %-14s %s | %s | max_abs %.3e rel %.3e (decode %.3e prefill %.3e) unwritten %zu | "
      "%s\n",
      name.c_str(), cfg.c_str(), describe(pr).c_str(), describe(attn).c_str(), e.max_abs, e.rel, e.rel_decode,
      e.rel_prefill, e.unwritten, e.worst.c_str());
  std::fflush(stdout);
}

struct Config {
  const char* name;
  AttentionPlanOptions opt;
};
const std::vector<Config>& configs() {
  static const std::vector<Config> c = {
      {"auto", {}},
      {"t64+splits", {64, 256, 256}},
      {"t128-nosplit", {128, -1, -1}},
      {"t128-sm80", {128, -1, -1, true}},  // the sm_80 kernel where the Hopper one would run
  };
  return c;
}

// Runs a problem under every configuration against the CPU reference; returns the auto plan's stats.
template <class T>
chunkwise::cuda::AttentionPlanStats check_dense(const std::string& name, Problem<T>& pr) {
  const std::vector<float> ref = cpu_reference(pr);
  Stream stream;
  PagedAttention attn;
  chunkwise::cuda::AttentionPlanStats auto_stats;
  for (const Config& c : configs()) {
    attn.set_options(c.opt);
    attn.plan(pr.qs, pr.ps, pr.kvl, pr.pos, pr.sh.n_heads, pr.sh.n_kv, pr.sh.d, pr.sh.bs, stream.s);
    if (std::string(c.name) == "auto") auto_stats = attn.stats();
    const std::vector<float> got = run_gpu(pr, attn, nullptr, stream.s);
    const Errors e = compare(pr, got, ref);
    report(name, c.name, pr, attn, e);
    INFO(name << " " << c.name << " " << describe(pr) << " " << describe(attn) << " rel " << e.rel
              << " unwritten " << e.unwritten << " " << e.worst);
    CHECK(e.unwritten == 0);
    CHECK(e.rel < kTol<T>);
  }
  return auto_stats;
}

// ---- block-sparse ------------------------------------------------------------------------------

// kind: "full" (every causal tile), "random" (diagonal + ~density of the others), "holes"
// (random, some rows without their diagonal and some rows empty), "columns" (random + columns).
template <class T>
Mask make_mask(const Problem<T>& pr, int tile, const std::vector<bool>& masked, const std::string& kind,
               double density, std::mt19937& rng) {
  Mask m;
  m.tile = tile;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  m.seq_row_start.push_back(0);
  m.row_ptr.push_back(0);
  m.column_ptr.push_back(0);
  for (std::size_t s = 0; s < pr.seqs.size(); ++s) {
    const Seq& sq = pr.seqs[s];
    if (!masked[s] || sq.rows <= 1) {
      m.seq_row_start.push_back(m.seq_row_start.back());
      continue;
    }
    const int first = sq.start / tile, last = (sq.start + sq.rows - 1) / tile;
    for (int h = 0; h < pr.sh.n_heads; ++h) {
      for (int t = first; t <= last; ++t) {
        std::vector<int> kept;
        const double r = u(rng);
        const bool empty = kind == "holes" && r < 0.1;
        const bool no_diag = kind == "holes" && r >= 0.1 && r < 0.3;
        for (int c = 0; c <= t && !empty; ++c) {
          const bool keep = kind == "full" || (c == t && !no_diag) || (c < t && u(rng) < density);
          if (keep) kept.push_back(c);
        }
        m.col_idx.insert(m.col_idx.end(), kept.begin(), kept.end());
        m.row_ptr.push_back(static_cast<std::int32_t>(m.col_idx.size()));
        if (kind == "columns") {
          // Up to 100 positions before the tile, outside the kept tiles.
          std::vector<int> cand;
          for (int p = 0; p < t * tile; ++p)
            if (!std::binary_search(kept.begin(), kept.end(), p / tile)) cand.push_back(p);
          std::shuffle(cand.begin(), cand.end(), rng);
          cand.resize(std::min<std::size_t>(cand.size(), 1 + rng() % 100));
          std::sort(cand.begin(), cand.end());
          m.column_idx.insert(m.column_idx.end(), cand.begin(), cand.end());
        }
        m.column_ptr.push_back(static_cast<std::int32_t>(m.column_idx.size()));
      }
    }
    m.seq_row_start.push_back(static_cast<std::int32_t>(m.row_ptr.size() - 1));
  }
  m.upload(kind == "columns");
  return m;
}

// Double-precision masked reference.
template <class E>
std::vector<double> masked_reference(const Problem<E>& pr, const Mask& m, bool with_columns) {
  const int H = pr.sh.n_heads, D = pr.sh.d, group = pr.sh.n_heads / pr.sh.n_kv, T = m.tile;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  std::vector<double> out(pr.out_elems(), 0.0);
  std::vector<int> keys;
  for (std::size_t s = 0; s < pr.seqs.size(); ++s) {
    const Seq& sq = pr.seqs[s];
    const bool masked = m.seq_row_start[s + 1] > m.seq_row_start[s] && sq.rows > 1;
    const int first = sq.start / T, n_qtiles = (sq.start + sq.rows - 1) / T - first + 1;
    for (int r = pr.qs[s]; r < pr.qs[s + 1]; ++r) {
      const int p = pr.pos[static_cast<std::size_t>(r)];
      for (int h = 0; h < H; ++h) {
        keys.clear();
        if (!masked) {
          for (int k = 0; k <= p; ++k) keys.push_back(k);
        } else {
          const int mrow = m.seq_row_start[s] + h * n_qtiles + (p / T - first);
          for (int i = m.row_ptr[static_cast<std::size_t>(mrow)];
               i < m.row_ptr[static_cast<std::size_t>(mrow) + 1]; ++i) {
            const int c = m.col_idx[static_cast<std::size_t>(i)];
            for (int k = c * T; k < (c + 1) * T && k <= p; ++k) keys.push_back(k);
          }
          if (with_columns) {
            for (int i = m.column_ptr[static_cast<std::size_t>(mrow)];
                 i < m.column_ptr[static_cast<std::size_t>(mrow) + 1]; ++i) {
              const int k = m.column_idx[static_cast<std::size_t>(i)];
              if (k >= 0 && k <= p) keys.push_back(k);
            }
          }
        }
        if (keys.empty()) continue;
        const std::size_t qo = (static_cast<std::size_t>(r) * H + h) * D;
        const int kv_head = h / group * D;
        add_softmax_reference(
            pr.qf.data() + qo, pr.kf.data() + kv_head, pr.vf.data() + kv_head, keys,
            [&](int k) { return pr.slot_offset(static_cast<int>(s), k); }, D, scale,
            [](float x) { return static_cast<double>(x); }, out.data() + qo);
      }
    }
  }
  return out;
}

}  // namespace

TEMPLATE_TEST_CASE("paged attention matches the CPU reference on ragged batches, GQA shapes and block sizes",
                   "[cuda][attention]", bf16, f16) {
  struct Spec {
    const char* name;
    Shape sh;
    std::vector<Seq> seqs;
  };
  const std::vector<Spec> specs = {
      {"gqa9/3 d64 bs16 mixed",
       {9, 3, 64, 16},
       {{1, 0},
        {1, 62},
        {1, 63},
        {1, 64},
        {1, 999},
        {64, 100},
        {200, 37},
        {63, 0},
        {64, 0},
        {65, 0},
        {1030, 0},
        {2, 500}}},
      {"gqa4/1 d128 bs64", {4, 1, 128, 64}, {{1, 2000}, {130, 0}, {65, 700}, {1, 5}, {300, 64}}},
      {"gqa32/8 d128 bs16", {32, 8, 128, 16}, {{1, 4095}, {1, 100}, {257, 1000}, {1100, 0}, {17, 3}}},
      {"mha8/8 d64 bs128", {8, 8, 64, 128}, {{1, 300}, {128, 128}, {129, 0}, {1, 127}, {1, 128}, {500, 20}}},
      {"gqa9/3 d64 bs5 (odd)", {9, 3, 64, 5}, {{1, 44}, {70, 33}, {1000, 0}, {1, 7}, {64, 1}}},
      {"gqa4/2 d128 bs1", {4, 2, 128, 1}, {{1, 100}, {80, 20}, {33, 0}}},
      {"mqa32/1 d64 bs16 (group>16)", {32, 1, 64, 16}, {{1, 700}, {40, 10}, {1, 0}}},
      {"gqa8/1 d64 bs32 prefill-only", {8, 1, 64, 32}, {{64, 0}, {65, 64}, {63, 200}}},
      {"gqa8/2 d128 bs16 decode-only", {8, 2, 128, 16}, {{1, 63}, {1, 64}, {1, 65}, {1, 1}, {1, 1500}}},
  };
  std::uint32_t seed = 1;
  for (const Spec& sp : specs) {
    Problem<TestType> pr = make_problem<TestType>(sp.sh, sp.seqs, seed++);
    const auto st = check_dense(sp.name, pr);
    // On Hopper the auto plan must take the wgmma kernel (this build holds sm_90a code).
    int major = 0;
    chunkwise::cuda::check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0), "cc");
    INFO(sp.name << " auto plan: " << describe(pr) << " " << (st.prefill_wgmma ? "wgmma" : "mma.sync"));
    if (major == 9 && st.prefill_items > 0) CHECK(st.prefill_wgmma);
  }
}

TEMPLATE_TEST_CASE("long decode contexts and long cached prefixes split the KV and merge",
                   "[cuda][attention]", bf16, f16) {
  Problem<TestType> pr =
      make_problem<TestType>({32, 8, 128, 16}, {{1, 8191}, {1, 5000}, {64, 6000}, {1, 300}}, 77);
  const auto st = check_dense("long contexts 32/8 d128 8K", pr);
  INFO("auto plan: decode splits " << st.decode_splits << ", prefill splits " << st.prefill_splits);
  CHECK(st.decode_splits > 1);
  CHECK(st.prefill_splits > 1);
}

TEMPLATE_TEST_CASE(
    "block-sparse prefill: full mask equals dense, random masks and columns match a double reference",
    "[cuda][attention]", bf16, f16) {
  using T = TestType;
  struct Spec {
    const char* name;
    Shape sh;
    int tile;
    std::vector<Seq> seqs;
    std::vector<bool> masked;
  };
  const std::vector<Spec> specs = {
      {"sparse t64 8/2 d128 bs16",
       {8, 2, 128, 16},
       64,
       {{300, 0}, {200, 130}, {1, 400}, {100, 0}},
       {true, true, true, false}},
      {"sparse t128 9/3 d64 bs16",
       {9, 3, 64, 16},
       128,
       {{700, 0}, {300, 250}, {1, 600}},
       {true, true, false}},
      {"sparse t128 4/1 d64 bs5", {4, 1, 64, 5}, 128, {{260, 0}, {50, 900}, {129, 127}}, {true, true, true}},
      {"sparse t128 8/8 d128 bs64",
       {8, 8, 128, 64},
       128,
       {{384, 0}, {1, 100}, {70, 700}},
       {true, false, true}},
  };
  std::mt19937 rng(2024);
  std::uint32_t seed = 100;
  for (const Spec& sp : specs) {
    Problem<T> pr = make_problem<T>(sp.sh, sp.seqs, seed++);
    Stream stream;
    PagedAttention attn;
    attn.plan(pr.qs, pr.ps, pr.kvl, pr.pos, pr.sh.n_heads, pr.sh.n_kv, pr.sh.d, pr.sh.bs, stream.s, sp.tile);
    const std::vector<float> dense = run_gpu(pr, attn, nullptr, stream.s);
    {
      const Errors e = compare(pr, dense, cpu_reference(pr));
      report(sp.name, "dense(no mask)", pr, attn, e);
      CHECK(e.unwritten == 0);
      CHECK(e.rel < kTol<T>);
    }
    for (const char* kind : {"full", "random", "holes", "columns"}) {
      const Mask m = make_mask(pr, sp.tile, sp.masked, kind, 0.3, rng);
      const bool cols = std::string(kind) == "columns";
      const std::vector<float> got = run_gpu(pr, attn, &m.view, stream.s);
      const std::vector<double> ref = masked_reference(pr, m, cols);
      const Errors e = compare(pr, got, ref);
      char cfg[64];
      std::snprintf(cfg, sizeof cfg, "%s(%zu tiles)", kind, m.col_idx.size());
      report(sp.name, cfg, pr, attn, e);
      INFO(sp.name << " mask " << kind << " rel " << e.rel << " unwritten " << e.unwritten << " " << e.worst);
      CHECK(e.unwritten == 0);
      CHECK(e.rel < kTol<T>);
      if (std::string(kind) == "full") {
        // Every causal tile kept: the same steps as the dense path, so the same result.
        const Errors same = compare(pr, got, dense);
        std::printf("[attention] %-28s %s full mask vs dense path: max_abs %.3e rel %.3e\n", sp.name,
                    type_name<T>(), same.max_abs, same.rel);
        CHECK(same.unwritten == 0);
        CHECK(same.rel < 1e-3);
      }
    }
  }
}

TEST_CASE("a step captured in a CUDA graph replays to the same output", "[cuda][attention]") {
  Problem<bf16> pr = make_problem<bf16>({9, 3, 64, 16}, {{1, 3000}, {300, 40}, {1, 10}, {70, 0}}, 555);
  Stream stream;
  PagedAttention attn;
  attn.set_options({64, 512, 256});  // prefill, decode and merge launches
  attn.plan(pr.qs, pr.ps, pr.kvl, pr.pos, pr.sh.n_heads, pr.sh.n_kv, pr.sh.d, pr.sh.bs, stream.s);
  REQUIRE(attn.stats().launches == 3);
  const std::vector<float> direct = run_gpu(pr, attn, nullptr, stream.s);

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  check_cuda(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  check_cuda(cudaMemsetAsync(pr.dout.get(), 0xff, pr.out_elems() * sizeof(bf16), stream.s), "poison");
  attn.run(pr.dq.get(), pr.kv(), pr.view(), nullptr, default_scale(pr), pr.dout.get(), stream.s);
  check_cuda(cudaStreamEndCapture(stream.s, &graph), "cudaStreamEndCapture");
  check_cuda(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  for (int rep = 0; rep < 2; ++rep) {
    check_cuda(cudaGraphLaunch(exec, stream.s), "cudaGraphLaunch");
    check_cuda(cudaStreamSynchronize(stream.s), "graph replay");
    const std::vector<float> replay = download_f32(pr.dout, pr.out_elems());
    std::size_t differ = 0;
    for (std::size_t i = 0; i < replay.size(); ++i) {
      const float x = replay[i];
      if (!(x == direct[i] || (std::isnan(x) && std::isnan(direct[i])))) ++differ;
    }
    std::printf("[attention] graph replay %d: %zu of %zu elements differ from the direct run\n", rep, differ,
                replay.size());
    CHECK(differ == 0);
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
}

TEST_CASE("PagedAttention rejects unsupported shapes and mismatched arguments", "[cuda][attention]") {
  const std::vector<std::int32_t> qs{0, 2}, ps{0, 1}, kvl{2}, pos{0, 1};
  auto expect_invalid = [](auto&& fn, const char* what) {
    INFO(what);
    try {
      fn();
      FAIL("no exception");
    } catch (const Error& e) {
      CHECK(e.code() == ErrorCode::kInvalidArgument);
    }
  };
  PagedAttention attn;
  expect_invalid([&] { attn.plan(qs, ps, kvl, pos, 4, 1, 96, 16, nullptr); }, "head_dim 96");
  expect_invalid([&] { attn.plan(qs, ps, kvl, pos, 10, 3, 64, 16, nullptr); }, "10 heads over 3 kv heads");
  expect_invalid([&] { attn.plan(qs, ps, kvl, pos, 4, 1, 64, 0, nullptr); }, "block size 0");
  expect_invalid([&] { attn.plan(qs, ps, kvl, pos, 4, 1, 64, 129, nullptr); }, "block size 129");
  expect_invalid([&] { attn.plan(qs, ps, kvl, pos, 4, 1, 64, 16, nullptr, 32); }, "sparse tile 32");
  expect_invalid([&] { attn.plan(qs, ps, std::vector<std::int32_t>{1}, pos, 4, 1, 64, 16, nullptr); },
                 "q_pos past kv_len");
  expect_invalid([&] { attn.plan(qs, ps, std::vector<std::int32_t>{17}, pos, 4, 1, 64, 16, nullptr); },
                 "kv_len past the pages");
  expect_invalid(
      [&] {
        attn.plan(qs, ps, std::vector<std::int32_t>{6}, std::vector<std::int32_t>{0, 5}, 4, 1, 64, 16,
                  nullptr, 64);
      },
      "gapped positions with a mask tile");
  expect_invalid([&] { attn.run<bf16>(nullptr, {}, {}, nullptr, 1.0f, nullptr, nullptr); },
                 "run before plan");

  Problem<bf16> pr = make_problem<bf16>({4, 1, 64, 16}, {{2, 0}}, 9);
  Stream stream;
  attn.plan(pr.qs, pr.ps, pr.kvl, pr.pos, 4, 1, 64, 16, stream.s);
  BasicPagedKvView<bf16> bad = pr.kv();
  bad.head_dim = 128;
  expect_invalid([&] { attn.run(pr.dq.get(), bad, pr.view(), nullptr, 0.125f, pr.dout.get(), stream.s); },
                 "cache head_dim differs from the plan");
  BlockSparseMaskView mask;
  expect_invalid([&] { attn.run(pr.dq.get(), pr.kv(), pr.view(), &mask, 0.125f, pr.dout.get(), stream.s); },
                 "mask without sparse_tile in the plan");
  expect_invalid([&] { attn.run(pr.dq.get(), pr.kv(), pr.view(), nullptr, -1.0f, pr.dout.get(), stream.s); },
                 "negative scale");
}
