// Attention kernel benchmark: dense causal prefill, block-sparse prefill and paged decode through
// chunkwise::cuda::PagedAttention, timed with CUDA events (warm-up, then the median of >= 10 runs).
// Inputs are random bf16 (never zero), the KV cache paged (block ids a random permutation of the
// pool: every block used once, in random order); decode reads 1 GiB of KV per run (beyond L2).
// Each case also checks a few output rows against a double-precision reference ("check" column).
//
//   bench_attention [FILTER]      runs the cases whose name contains FILTER (default: all)
//
// Prints the card, one table, and per case a line `BENCH_JSON {"case", "shape", "ms", "tflops" |
// "tbps", ...}` (bench/gpu/README.md names the cases).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "chunkwise/cuda/attention.hpp"
#include "chunkwise/cuda/common.hpp"
#include "cuda/attention_fixture.hpp"

namespace {

using chunkwise::cuda::AttentionBatchView;
using chunkwise::cuda::bf16;
using chunkwise::cuda::BlockSparseMaskView;
using chunkwise::cuda::check_cuda;
using chunkwise::cuda::DeviceBuffer;
using chunkwise::cuda::PagedAttention;
using chunkwise::cuda::PagedKvView;
using chunkwise::cuda::attention_fixture::add_softmax_reference;
using chunkwise::cuda::attention_fixture::PagedBatch;
using chunkwise::cuda::attention_fixture::Stream;
using chunkwise::cuda::attention_fixture::to_device;

constexpr int kHeads = 32, kKvHeads = 8, kDim = 128;

float bf16_value(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Random bf16 with a random sign and magnitude in [0.5, 2): never zero, cheap to make in bulk.
void fill_random(std::vector<std::uint16_t>& v, std::uint64_t seed) {
  std::uint64_t x = seed;
  for (std::size_t i = 0; i < v.size(); i += 4) {
    x += 0x9e3779b97f4a7c15ull;  // splitmix64
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    for (std::size_t j = 0; j < 4 && i + j < v.size(); ++j) {
      const auto r = static_cast<std::uint32_t>(z >> (16 * j)) & 0xffffu;
      const std::uint32_t sign = (r >> 15) & 1u, exp = 126u + ((r >> 14) & 1u), man = r & 0x7fu;
      v[i + j] = static_cast<std::uint16_t>((sign << 15) | (exp << 7) | man);
    }
  }
}

// Median milliseconds of `iters` runs after `warmup`, each timed alone with events.
template <class F>
double median_ms(F&& fn, cudaStream_t s, int warmup, int iters) {
  cudaEvent_t a, b;
  check_cuda(cudaEventCreate(&a), "cudaEventCreate");
  check_cuda(cudaEventCreate(&b), "cudaEventCreate");
  for (int i = 0; i < warmup; ++i) fn();
  check_cuda(cudaStreamSynchronize(s), "warm-up");
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    check_cuda(cudaEventRecord(a, s), "cudaEventRecord");
    fn();
    check_cuda(cudaEventRecord(b, s), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Shared inputs: one random bf16 array on the host and the device; every case takes its q, K and
// V from disjoint ranges of it.
struct Inputs {
  std::vector<std::uint16_t> host;
  DeviceBuffer<bf16> dev;
  explicit Inputs(std::size_t n) : host(n) {
    fill_random(host, 12345);
    dev = DeviceBuffer<bf16>(n);
    check_cuda(cudaMemcpy(dev.get(), host.data(), n * 2, cudaMemcpyHostToDevice), "upload inputs");
  }
};

// A batch of sequences over one paged cache whose blocks are a random permutation of the pool.
struct Batch : PagedBatch {
  std::size_t q_off = 0, k_off = 0, v_off = 0;  // element offsets into Inputs

  [[nodiscard]] std::size_t q_elems() const { return static_cast<std::size_t>(rows()) * kHeads * kDim; }
  [[nodiscard]] std::size_t kv_elems() const {
    return static_cast<std::size_t>(ps.back()) * static_cast<std::size_t>(block_size) * kKvHeads * kDim;
  }
  void finish(std::uint32_t seed) {
    pages.resize(static_cast<std::size_t>(ps.back()));
    std::iota(pages.begin(), pages.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(pages.begin(), pages.end(), rng);
    q_off = 0;
    k_off = q_elems();
    v_off = k_off + kv_elems();
    upload();
  }
  [[nodiscard]] std::size_t elems_needed() const { return q_elems() + 2 * kv_elems(); }
  [[nodiscard]] PagedKvView kv(const Inputs& in) const {
    return {in.dev.get() + k_off, in.dev.get() + v_off, block_size, kKvHeads, kDim};
  }
};

// Mask for one sequence at positions [0, L): the same kept tiles for every head.
struct Mask : chunkwise::cuda::attention_fixture::Mask {
  std::vector<std::vector<int>> kept;  // per query tile, sorted key tiles
  std::size_t kept_tiles = 0, causal_tiles = 0;
};

Mask make_mask(int L, int tile, int percent, std::uint32_t seed) {
  Mask m;
  m.tile = tile;
  const int nt = L / tile;
  m.causal_tiles = static_cast<std::size_t>(nt) * (nt + 1) / 2;
  std::vector<std::pair<int, int>> lower;
  for (int t = 0; t < nt; ++t)
    for (int c = 0; c < t; ++c) lower.emplace_back(t, c);
  const long want = std::lround(percent / 100.0 * static_cast<double>(m.causal_tiles)) - nt;
  const std::size_t extra =
      static_cast<std::size_t>(std::clamp<long>(want, 0, static_cast<long>(lower.size())));
  std::mt19937 rng(seed);
  std::shuffle(lower.begin(), lower.end(), rng);
  m.kept.assign(static_cast<std::size_t>(nt), {});
  for (std::size_t i = 0; i < extra; ++i)
    m.kept[static_cast<std::size_t>(lower[i].first)].push_back(lower[i].second);
  for (int t = 0; t < nt; ++t) {
    auto& k = m.kept[static_cast<std::size_t>(t)];
    k.push_back(t);
    std::sort(k.begin(), k.end());
    m.kept_tiles += k.size();
  }
  m.seq_row_start = {0, kHeads * nt};
  m.row_ptr.push_back(0);
  for (int h = 0; h < kHeads; ++h) {
    for (int t = 0; t < nt; ++t) {
      const auto& k = m.kept[static_cast<std::size_t>(t)];
      m.col_idx.insert(m.col_idx.end(), k.begin(), k.end());
      m.row_ptr.push_back(static_cast<std::int32_t>(m.col_idx.size()));
    }
  }
  m.upload(false);
  return m;
}

// Relative error of a few (row, head) outputs against a double reference over `keys(row)`.
template <class Keys>
double spot_check(const Inputs& in, const Batch& b, const DeviceBuffer<bf16>& out,
                  const std::vector<int>& rows, const std::vector<int>& heads, float scale, Keys&& keys_of) {
  double num = 0, den = 0;
  std::vector<std::uint16_t> got(kDim);
  for (const int r : rows) {
    int seq = 0;
    while (b.qs[static_cast<std::size_t>(seq) + 1] <= r) ++seq;
    const std::vector<int> keys = keys_of(r, b.pos[static_cast<std::size_t>(r)]);
    for (const int h : heads) {
      const int kvh = h / (kHeads / kKvHeads);
      const std::size_t qi =
          b.q_off + (static_cast<std::size_t>(r) * kHeads + static_cast<std::size_t>(h)) * kDim;
      const std::size_t kv_head = static_cast<std::size_t>(kvh) * kDim;
      std::vector<double> ref(kDim, 0.0);
      add_softmax_reference(
          in.host.data() + qi, in.host.data() + b.k_off + kv_head, in.host.data() + b.v_off + kv_head, keys,
          [&](int p) { return b.slot(seq, p) * kKvHeads * kDim; }, kDim, scale,
          [](std::uint16_t x) { return static_cast<double>(bf16_value(x)); }, ref.data());
      check_cuda(
          cudaMemcpy(got.data(),
                     out.get() + (static_cast<std::size_t>(r) * kHeads + static_cast<std::size_t>(h)) * kDim,
                     kDim * 2, cudaMemcpyDeviceToHost),
          "download");
      for (int x = 0; x < kDim; ++x) {
        const double g = bf16_value(got[static_cast<std::size_t>(x)]);
        const double d = std::isnan(g) ? 1e30 : g - ref[static_cast<std::size_t>(x)];
        num += d * d;
        den += ref[static_cast<std::size_t>(x)] * ref[static_cast<std::size_t>(x)];
      }
    }
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct Row {
  std::string name, shape, figure_key, plan;
  double ms = 0, figure = 0, kept = -1, check = 0;
  std::string error;
};

std::string plan_text(const PagedAttention& a, int block_size) {
  const auto& s = a.stats();
  char buf[200];
  std::snprintf(
      buf, sizeof buf,
      "KV block size %d; plan: tile %d (%s), %d prefill CTAs/head (split %d), %d decode CTAs/kv head (split "
      "%d), %d merged rows",
      block_size, s.prefill_tile_rows,
      s.prefill_items == 0 ? "-"
      : s.prefill_wgmma    ? "wgmma"
                           : "mma.sync",
      s.prefill_items, s.prefill_splits, s.decode_items, s.decode_splits, s.merge_rows);
  return buf;
}

// For a JSON string: no quotes or backslashes, no control characters.
std::string json_safe(std::string s) {
  for (char& c : s)
    if (c == '"' || c == '\\' || static_cast<unsigned char>(c) < 0x20) c = '\'';
  return s;
}

void emit(const Row& r) {
  if (!r.error.empty()) {
    std::printf("BENCH_JSON {\"case\": \"%s\", \"shape\": \"%s\", \"error\": \"%s\"}\n", r.name.c_str(),
                r.shape.c_str(), json_safe(r.error).c_str());
  } else {
    std::printf("BENCH_JSON {\"case\": \"%s\", \"shape\": \"%s\", \"ms\": %.5f, \"%s\": %.4f", r.name.c_str(),
                r.shape.c_str(), r.ms, r.figure_key.c_str(), r.figure);
    if (r.kept >= 0) std::printf(", \"kept\": %.4f", r.kept);
    std::printf(", \"check_rel_err\": %.3e, \"note\": \"chunkwise PagedAttention; %s\"}\n", r.check,
                r.plan.c_str());
  }
  std::fflush(stdout);
}

// portable: the sm_80 kernel even where the Hopper one would run (its figure for comparison).
Row dense_or_sparse(Inputs& in, DeviceBuffer<bf16>& out, int L, int percent, bool portable, cudaStream_t s) {
  Row row;
  const bool sparse = percent > 0;
  char name[64], shape[96];
  if (sparse) {
    std::snprintf(name, sizeof name, "sparse_prefill_L%d_d%d%s", L, percent, portable ? "_sm80" : "");
    std::snprintf(shape, sizeof shape, "b1 h%d/%d d%d L%d tiles 128x128", kHeads, kKvHeads, kDim, L);
  } else {
    std::snprintf(name, sizeof name, "dense_prefill_L%d%s", L, portable ? "_sm80" : "");
    std::snprintf(shape, sizeof shape, "b1 h%d/%d d%d L%d causal", kHeads, kKvHeads, kDim, L);
  }
  row.name = name;
  row.shape = shape;
  Batch b;
  b.block_size = 16;
  b.add(L, 0);
  b.finish(7);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  PagedAttention attn;
  if (portable) attn.set_options({0, 0, 0, true});
  attn.plan(b.qs, b.ps, b.kvl, b.pos, kHeads, kKvHeads, kDim, b.block_size, s, sparse ? 128 : 0);
  Mask mask;
  if (sparse) mask = make_mask(L, 128, percent, 1000u + static_cast<std::uint32_t>(percent));
  const BlockSparseMaskView* mv = sparse ? &mask.view : nullptr;
  const bf16* q = in.dev.get() + b.q_off;
  const PagedKvView kv = b.kv(in);
  const AttentionBatchView bv = b.view();
  check_cuda(cudaMemsetAsync(out.get(), 0xff, b.q_elems() * 2, s), "poison");
  auto fn = [&] { attn.run(q, kv, bv, mv, scale, out.get(), s); };
  const int iters = L <= 16384 ? 20 : 10;
  row.ms = median_ms(fn, s, 2, iters);
  if (sparse) {
    const double nt = L / 128.0;
    row.kept = static_cast<double>(mask.kept_tiles) / static_cast<double>(mask.causal_tiles);
    const double flops =
        4.0 * kHeads * kDim * 128.0 * 128.0 * (static_cast<double>(mask.kept_tiles) - nt + 0.5 * nt);
    row.figure = flops / (row.ms * 1e-3) / 1e12;
  } else {
    row.figure = 2.0 * kHeads * static_cast<double>(L) * L * kDim / (row.ms * 1e-3) / 1e12;
  }
  row.figure_key = "tflops";
  row.plan = plan_text(attn, b.block_size);
  auto keys = [&](int /*r*/, int p) {
    std::vector<int> k;
    if (!sparse) {
      for (int x = 0; x <= p; ++x) k.push_back(x);
    } else {
      for (const int c : mask.kept[static_cast<std::size_t>(p / 128)])
        for (int x = c * 128; x < (c + 1) * 128 && x <= p; ++x) k.push_back(x);
    }
    return k;
  };
  row.check = spot_check(in, b, out, {0, 63, 64, L / 2 + 7, L - 1}, {0, 13, 31}, scale, keys);
  return row;
}

Row decode(Inputs& in, DeviceBuffer<bf16>& out, int batch, int ctx, int block_size, cudaStream_t s) {
  Row row;
  char name[64], shape[96];
  std::snprintf(name, sizeof name, block_size == 16 ? "decode_%dx%d" : "decode_%dx%d_bs%d", batch, ctx,
                block_size);
  if (block_size == 16) {
    std::snprintf(shape, sizeof shape, "b%d ctx%d h%d/%d d%d", batch, ctx, kHeads, kKvHeads, kDim);
  } else {
    std::snprintf(shape, sizeof shape, "b%d ctx%d h%d/%d d%d bs%d", batch, ctx, kHeads, kKvHeads, kDim,
                  block_size);
  }
  row.name = name;
  row.shape = shape;
  Batch b;
  b.block_size = block_size;
  for (int i = 0; i < batch; ++i) b.add(1, ctx - 1);
  b.finish(11);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));
  PagedAttention attn;
  attn.plan(b.qs, b.ps, b.kvl, b.pos, kHeads, kKvHeads, kDim, b.block_size, s);
  const bf16* q = in.dev.get() + b.q_off;
  const PagedKvView kv = b.kv(in);
  const AttentionBatchView bv = b.view();
  check_cuda(cudaMemsetAsync(out.get(), 0xff, b.q_elems() * 2, s), "poison");
  auto fn = [&] { attn.run(q, kv, bv, nullptr, scale, out.get(), s); };
  row.ms = median_ms(fn, s, 5, 50);
  const double bytes = 2.0 * batch * static_cast<double>(ctx) * kKvHeads * kDim * 2;
  row.figure = bytes / (row.ms * 1e-3) / 1e12;
  row.figure_key = "tbps";
  row.plan = plan_text(attn, b.block_size);
  auto keys = [&](int, int p) {
    std::vector<int> k(static_cast<std::size_t>(p) + 1);
    std::iota(k.begin(), k.end(), 0);
    return k;
  };
  row.check = spot_check(in, b, out, {0, batch - 1}, {0, 3, 4, 31}, scale, keys);
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  auto wanted = [&](const std::string& name) {
    return filter.empty() || name.find(filter) != std::string::npos;
  };
  int dev = 0;
  cudaDeviceProp prop{};
  if (cudaGetDeviceCount(&dev) != cudaSuccess || dev == 0) {
    std::puts("bench_attention: no CUDA device");
    return 1;
  }
  check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  std::printf("card: %s, %d SMs, %.0f MB L2, %.1f GB, cc %d.%d\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize / 1048576.0, static_cast<double>(prop.totalGlobalMem) / 1e9, prop.major,
              prop.minor);
  std::fflush(stdout);

  std::vector<Row> rows;
  try {
    Stream stream;
    // The largest case: 64K prefill (q 268M + K, V 67M elements each) or decode (K, V 268M each).
    Inputs in(std::size_t{600} << 20);
    DeviceBuffer<bf16> out(static_cast<std::size_t>(65536) * kHeads * kDim);
    auto run_case = [&](const std::string& name, auto&& fn) {
      if (!wanted(name)) return;
      Row r;
      try {
        r = fn();
      } catch (const std::exception& e) {
        r.name = name;
        r.error = e.what();
        cudaGetLastError();
      }
      emit(r);
      rows.push_back(r);
    };
    for (const int L : {4096, 16384, 65536}) {
      run_case("dense_prefill_L" + std::to_string(L),
               [&] { return dense_or_sparse(in, out, L, 0, false, stream.s); });
    }
    run_case("dense_prefill_L16384_sm80", [&] { return dense_or_sparse(in, out, 16384, 0, true, stream.s); });
    for (const int pct : {100, 30, 10, 3}) {
      run_case("sparse_prefill_L32768_d" + std::to_string(pct),
               [&] { return dense_or_sparse(in, out, 32768, pct, false, stream.s); });
    }
    run_case("sparse_prefill_L32768_d10_sm80",
             [&] { return dense_or_sparse(in, out, 32768, 10, true, stream.s); });
    for (const int bs : {16, 64}) {
      run_case(bs == 16 ? "decode_64x4096" : "decode_64x4096_bs64",
               [&] { return decode(in, out, 64, 4096, bs, stream.s); });
      run_case(bs == 16 ? "decode_8x32768" : "decode_8x32768_bs64",
               [&] { return decode(in, out, 8, 32768, bs, stream.s); });
    }
  } catch (const std::exception& e) {
    std::printf("bench_attention: %s\n", e.what());
    return 1;
  }

  std::printf("\n%-28s %-40s %10s %12s %7s %10s  %s\n", "case", "shape", "ms", "figure", "kept", "check",
              "plan");
  for (const Row& r : rows) {
    if (!r.error.empty()) {
      std::printf("%-28s %-40s ERROR %s\n", r.name.c_str(), r.shape.c_str(), r.error.c_str());
      continue;
    }
    char fig[32], kept[16] = "-";
    std::snprintf(fig, sizeof fig, "%.2f %s", r.figure, r.figure_key == "tbps" ? "TB/s" : "TFLOP/s");
    if (r.kept >= 0) std::snprintf(kept, sizeof kept, "%.3f", r.kept);
    std::printf("%-28s %-40s %10.4f %12s %7s %10.2e  %s\n", r.name.c_str(), r.shape.c_str(), r.ms, fig, kept,
                r.check, r.plan.c_str());
  }
  return 0;
}
