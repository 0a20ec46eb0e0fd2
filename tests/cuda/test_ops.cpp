// The element-wise and sampling kernels (chunkwise/cuda/ops.hpp) against the CPU reference ops
// (chunkwise/backend/cpu/ops.hpp) and the host sampler (chunkwise::sample): random normal inputs,
// several shapes (row lengths that are and are not multiples of 8), outputs poisoned with NaN bytes
// before every launch, every storage op for both storage types. 16-bit outputs pass at a relative
// L2 error below 1e-2 (bf16) or 2e-3 (fp16), fp32 ones below 1e-5, copies exactly; greedy sampling
// exactly, sampled rows as documented in ops.hpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/detail/counter_rng.hpp"
#include "chunkwise/core/sampling.hpp"
#include "chunkwise/cuda/common.hpp"
#include "chunkwise/cuda/gemm.hpp"
#include "chunkwise/cuda/ops.hpp"

namespace {

namespace cu = chunkwise::cuda;
using cu::bf16;
using cu::DeviceBuffer;
using cu::f16;
using i64 = std::int64_t;

// ---- device buffers ----

template <class T>
DeviceBuffer<T> upload(const std::vector<T>& h) {
  DeviceBuffer<T> d(std::max<std::size_t>(h.size(), 1));
  if (!h.empty())
    cu::check_cuda(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  return d;
}

template <class T>
std::vector<T> download(const T* d, std::size_t n) {
  std::vector<T> h(n);
  if (n > 0) cu::check_cuda(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), "download");
  return h;
}

// Fills with 0xff bytes: NaN for fp32, bf16 and fp16, -1 for integers.
template <class T>
DeviceBuffer<T> poisoned(std::size_t n) {
  DeviceBuffer<T> d(std::max<std::size_t>(n, 1));
  cu::check_cuda(cudaMemset(d.get(), 0xff, d.bytes()), "poison");
  return d;
}

void sync(const char* what) {
  cu::check_cuda(cudaGetLastError(), what);
  cu::check_cuda(cudaDeviceSynchronize(), what);
}

// ---- host data ----

std::vector<float> normal(std::mt19937& rng, std::size_t n, float mean = 0.0f, float sigma = 1.0f) {
  std::normal_distribution<float> d(mean, sigma);
  std::vector<float> v(n);
  for (float& x : v) {
    do x = d(rng);
    while (x == 0.0f);
  }
  return v;
}

// Rounded to the storage type T (bf16 or f16; to nearest even) and back (exact).
template <class T>
std::vector<T> to_storage(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = T(v[i]);
  return out;
}

template <class T>
std::vector<float> to_f32(const std::vector<T>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = static_cast<float>(v[i]);
  return out;
}

// Relative L2 bound for outputs rounded once to T: a few times the error of that rounding (unit
// roundoff 2^-8 for bf16, 2^-11 for fp16).
template <class T>
constexpr double kStorageTol = std::is_same_v<T, bf16> ? 1e-2 : 2e-3;

// ---- comparison ----

struct Diff {
  std::size_t n = 0;
  std::size_t non_finite = 0;
  std::size_t first_non_finite = 0;
  std::size_t first_bad = 0;  // first element off by more than tol * (|ref| + rms(ref))
  std::size_t n_bad = 0;
  std::size_t worst = 0;
  double max_abs = 0.0;
  double rel = 0.0;  // ||out - ref|| / ||ref||
};

Diff compare(const std::vector<float>& out, const std::vector<float>& ref, double tol) {
  Diff d;
  d.n = out.size();
  double num = 0.0, den = 0.0;
  for (const float r : ref) den += static_cast<double>(r) * r;
  const double rms = ref.empty() ? 0.0 : std::sqrt(den / static_cast<double>(ref.size()));
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      if (d.non_finite++ == 0) d.first_non_finite = i;
      continue;
    }
    const double e = std::abs(static_cast<double>(out[i]) - ref[i]);
    num += e * e;
    if (e > d.max_abs) d.max_abs = e, d.worst = i;
    if (e > tol * (std::abs(static_cast<double>(ref[i])) + rms) && d.n_bad++ == 0) d.first_bad = i;
  }
  d.rel = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
  return d;
}

std::string describe(const Diff& d, const std::vector<float>& out, const std::vector<float>& ref) {
  std::ostringstream s;
  s << "n=" << d.n << " rel_l2=" << d.rel << " max_abs=" << d.max_abs;
  if (d.n > 0) s << " at " << d.worst << " (out " << out[d.worst] << ", ref " << ref[d.worst] << ")";
  s << " non_finite=" << d.non_finite;
  if (d.non_finite > 0) s << " (first at " << d.first_non_finite << ")";
  s << " elements_off=" << d.n_bad;
  if (d.n_bad > 0)
    s << " (first at " << d.first_bad << ": out " << out[d.first_bad] << ", ref " << ref[d.first_bad] << ")";
  return s.str();
}

void check_close(const std::vector<float>& out, const std::vector<float>& ref, double tol,
                 const std::string& what) {
  REQUIRE(out.size() == ref.size());
  const Diff d = compare(out, ref, tol);
  INFO(what << ": " << describe(d, out, ref));
  CHECK(d.non_finite == 0);
  CHECK(d.rel < tol);
}

void check_equal(const std::vector<float>& out, const std::vector<float>& ref, const std::string& what) {
  REQUIRE(out.size() == ref.size());
  std::size_t n_diff = 0, first = 0;
  for (std::size_t i = 0; i < out.size(); ++i)
    if (std::bit_cast<std::uint32_t>(out[i]) != std::bit_cast<std::uint32_t>(ref[i]) && n_diff++ == 0)
      first = i;
  INFO(what << ": " << n_diff << " of " << out.size() << " elements differ"
            << (n_diff > 0 ? ", first at " + std::to_string(first) + " (out " + std::to_string(out[first]) +
                                 ", ref " + std::to_string(ref[first]) + ")"
                           : std::string()));
  CHECK(n_diff == 0);
}

std::string shape(std::initializer_list<std::pair<const char*, i64>> dims) {
  std::string s;
  for (const auto& [name, v] : dims) s += std::string(s.empty() ? "" : " ") + name + "=" + std::to_string(v);
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("cuda::embed copies table rows exactly and flags bad ids", "[cuda][ops]", bf16, f16) {
  using T = TestType;
  std::mt19937 rng(101);
  for (const auto& [vocab, dim, n] :
       {std::tuple<i64, i64, i64>{1000, 576, 37}, {500, 100, 13}, {257, 4096, 9}, {64, 7, 5}}) {
    const std::string what = "embed " + shape({{"vocab", vocab}, {"dim", dim}, {"n", n}});
    const std::vector<T> table = to_storage<T>(normal(rng, static_cast<std::size_t>(vocab * dim)));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    std::uniform_int_distribution<std::int32_t> pick(0, static_cast<std::int32_t>(vocab - 1));
    for (auto& id : ids) id = pick(rng);
    ids.front() = 0;
    ids.back() = static_cast<std::int32_t>(vocab - 1);
    const auto d_table = upload(table);
    const auto d_ids = upload(ids);
    auto d_out = poisoned<float>(static_cast<std::size_t>(n * dim));
    auto d_flag = upload(std::vector<int>{0});
    cu::embed(d_table.get(), vocab, dim, d_ids.get(), n, d_out.get(), d_flag.get(), nullptr);
    sync("embed");
    const std::vector<float> table_f = to_f32(table);
    std::vector<float> ref(static_cast<std::size_t>(n * dim));
    chunkwise::cpu::embed(table_f.data(), vocab, dim, ids.data(), n, ref.data());
    check_equal(download(d_out.get(), ref.size()), ref, what);
    CHECK(download(d_flag.get(), 1)[0] == 0);
  }

  // Device-side guard: out-of-range ids give zero rows and set the flag; the others are copied.
  const i64 vocab = 300, dim = 576;
  const std::vector<T> table = to_storage<T>(normal(rng, static_cast<std::size_t>(vocab * dim)));
  const std::vector<std::int32_t> ids{3, -1, static_cast<std::int32_t>(vocab), 299,
                                      std::numeric_limits<std::int32_t>::min()};
  const auto n = static_cast<i64>(ids.size());
  const auto d_table = upload(table);
  const auto d_ids = upload(ids);
  auto d_out = poisoned<float>(static_cast<std::size_t>(n * dim));
  auto d_flag = upload(std::vector<int>{0});
  cu::embed(d_table.get(), vocab, dim, d_ids.get(), n, d_out.get(), d_flag.get(), nullptr);
  sync("embed bad ids");
  CHECK(download(d_flag.get(), 1)[0] == 1);
  const std::vector<float> out = download(d_out.get(), static_cast<std::size_t>(n * dim));
  const std::vector<float> table_f = to_f32(table);
  std::vector<float> ref(out.size(), 0.0f);
  for (const i64 r : {i64{0}, i64{3}})
    std::copy_n(table_f.begin() + ids[static_cast<std::size_t>(r)] * dim, dim, ref.begin() + r * dim);
  check_equal(out, ref, "embed with ids {3, -1, vocab, 299, INT_MIN}");
}

TEMPLATE_TEST_CASE("cuda::add_rms_norm and rms_norm_f32 match cpu::rms_norm after the residual add",
                   "[cuda][ops]", bf16, f16) {
  using T = TestType;
  std::mt19937 rng(202);
  const float eps = 1e-5f;
  for (const auto& [rows, dim] : {std::pair<i64, i64>{7, 576},
                                  {5, 100},
                                  {3, 4096},
                                  {2, 20000},
                                  {2, 17001},
                                  {4, 8},
                                  {3, 12},
                                  {1, 16384}}) {
    for (const bool with_residual : {false, true}) {
      const std::string what =
          "rms_norm " + shape({{"rows", rows}, {"dim", dim}, {"residual", with_residual}});
      const auto size = static_cast<std::size_t>(rows * dim);
      const std::vector<float> x = normal(rng, size, 0.0f, 3.0f);
      const std::vector<float> residual = normal(rng, size);
      const std::vector<T> weight = to_storage<T>(normal(rng, static_cast<std::size_t>(dim), 1.0f, 0.5f));
      std::vector<float> x_ref = x;
      if (with_residual)
        for (std::size_t i = 0; i < size; ++i) x_ref[i] += residual[i];
      std::vector<float> y_ref(size);
      chunkwise::cpu::rms_norm(x_ref.data(), to_f32(weight).data(), rows, dim, eps, y_ref.data());

      const auto d_res = upload(residual);
      const auto d_w = upload(weight);
      const float* res = with_residual ? d_res.get() : nullptr;
      {
        auto d_x = upload(x);
        auto d_y = poisoned<T>(size);
        cu::add_rms_norm(d_x.get(), res, d_w.get(), rows, dim, eps, d_y.get(), nullptr);
        sync("add_rms_norm");
        check_equal(download(d_x.get(), size), x_ref, what + " (x after the residual add)");
        check_close(to_f32(download(d_y.get(), size)), y_ref, kStorageTol<T>, what + " (16-bit y)");
      }
      {
        auto d_x = upload(x);
        auto d_y = poisoned<float>(size);
        cu::rms_norm_f32(d_x.get(), res, d_w.get(), rows, dim, eps, d_y.get(), nullptr);
        sync("rms_norm_f32");
        check_equal(download(d_x.get(), size), x_ref, what + " (x after the residual add, f32 variant)");
        check_close(download(d_y.get(), size), y_ref, 1e-5, what + " (fp32 y)");
      }
    }
  }
}

TEMPLATE_TEST_CASE("cuda::rope_write_kv matches cpu::rope and cpu::write_kv", "[cuda][ops]", bf16, f16) {
  using T = TestType;
  std::mt19937 rng(303);
  struct Config {
    int n_heads, n_kv_heads, head_dim;
    float theta;
    bool llama3;
  };
  for (const Config& c : {Config{9, 3, 64, 10000.0f, false}, Config{32, 8, 128, 500000.0f, true},
                          Config{4, 2, 20, 10000.0f, false}, Config{2, 2, 6, 10000.0f, false}}) {
    for (const int block_size : {1, 16, 128}) {
      const i64 rows = 37;
      const int heads = c.n_heads + 2 * c.n_kv_heads;
      const i64 q_dim = static_cast<i64>(c.n_heads) * c.head_dim;
      const i64 kv_dim = static_cast<i64>(c.n_kv_heads) * c.head_dim;
      const i64 row_size = static_cast<i64>(heads) * c.head_dim;
      const i64 num_blocks = (std::max<i64>(3 * rows, 4 * block_size) + block_size - 1) / block_size;
      const i64 n_slots = num_blocks * block_size;
      const std::string what = "rope_write_kv " + shape({{"rows", rows},
                                                         {"n_heads", c.n_heads},
                                                         {"n_kv_heads", c.n_kv_heads},
                                                         {"head_dim", c.head_dim},
                                                         {"block_size", block_size},
                                                         {"num_blocks", num_blocks}});
      const std::vector<float> qkv = normal(rng, static_cast<std::size_t>(rows * row_size));
      std::vector<std::int32_t> positions(static_cast<std::size_t>(rows));
      std::uniform_int_distribution<std::int32_t> pos_dist(0, 8191);
      for (auto& p : positions) p = pos_dist(rng);
      positions[0] = 0;
      positions[1] = 8191;
      std::vector<i64> all_slots(static_cast<std::size_t>(n_slots));
      std::iota(all_slots.begin(), all_slots.end(), i64{0});
      std::shuffle(all_slots.begin(), all_slots.end(), rng);
      const std::vector<i64> slots(all_slots.begin(), all_slots.begin() + rows);
      chunkwise::RopeScaling scaling;
      if (c.llama3) scaling = chunkwise::RopeScaling{true, 8.0f, 1.0f, 4.0f, 8192};
      const std::vector<float> inv_freq = chunkwise::cpu::rope_inv_freq(c.head_dim, c.theta, scaling);

      // Reference: split q | k | v, rotate q and k, write k and v into a NaN-filled fp32 cache.
      std::vector<float> q(static_cast<std::size_t>(rows * q_dim)),
          k(static_cast<std::size_t>(rows * kv_dim)), v(static_cast<std::size_t>(rows * kv_dim));
      for (i64 r = 0; r < rows; ++r) {
        const float* src = qkv.data() + r * row_size;
        std::copy_n(src, q_dim, q.begin() + r * q_dim);
        std::copy_n(src + q_dim, kv_dim, k.begin() + r * kv_dim);
        std::copy_n(src + q_dim + kv_dim, kv_dim, v.begin() + r * kv_dim);
      }
      chunkwise::cpu::rope(q.data(), rows, c.n_heads, c.head_dim, positions.data(), inv_freq);
      chunkwise::cpu::rope(k.data(), rows, c.n_kv_heads, c.head_dim, positions.data(), inv_freq);
      const auto cache_size = static_cast<std::size_t>(n_slots * kv_dim);
      std::vector<float> k_cache(cache_size, std::numeric_limits<float>::quiet_NaN()), v_cache = k_cache;
      chunkwise::cpu::write_kv(
          chunkwise::cpu::PagedKv{k_cache.data(), v_cache.data(), block_size, c.n_kv_heads, c.head_dim},
          k.data(), v.data(), slots.data(), rows);

      const auto d_qkv = upload(qkv);
      const auto d_pos = upload(positions);
      const auto d_inv = upload(inv_freq);
      const auto d_slots = upload(slots);
      auto d_q = poisoned<T>(q.size());
      auto d_k = poisoned<T>(cache_size);
      auto d_v = poisoned<T>(cache_size);
      cu::rope_write_kv(d_qkv.get(), rows, c.n_heads, c.n_kv_heads, c.head_dim, d_pos.get(), d_inv.get(),
                        d_slots.get(), d_q.get(), d_k.get(), d_v.get(), block_size, nullptr);
      sync("rope_write_kv");
      check_close(to_f32(download(d_q.get(), q.size())), q, kStorageTol<T>, what + " (q_out)");

      // Written slots against the reference; every other cache element still holds the poison.
      for (const auto& [name, d_cache, ref_cache] :
           {std::tuple<const char*, const T*, const std::vector<float>*>{"k_cache", d_k.get(), &k_cache},
            {"v_cache", d_v.get(), &v_cache}}) {
        const std::vector<T> got = download(d_cache, cache_size);
        std::vector<float> out_rows, ref_rows;
        std::vector<char> written(static_cast<std::size_t>(n_slots), 0);
        for (const i64 s : slots) {
          written[static_cast<std::size_t>(s)] = 1;
          for (i64 e = 0; e < kv_dim; ++e) {
            out_rows.push_back(static_cast<float>(got[static_cast<std::size_t>(s * kv_dim + e)]));
            ref_rows.push_back((*ref_cache)[static_cast<std::size_t>(s * kv_dim + e)]);
          }
        }
        check_close(out_rows, ref_rows, kStorageTol<T>, what + " (" + name + ", written slots)");
        std::size_t touched = 0;
        for (i64 s = 0; s < n_slots; ++s) {
          if (written[static_cast<std::size_t>(s)]) continue;
          for (i64 e = 0; e < kv_dim; ++e) {
            std::uint16_t bits;
            std::memcpy(&bits, &got[static_cast<std::size_t>(s * kv_dim + e)], sizeof(bits));
            touched += bits != 0xffff ? 1 : 0;
          }
        }
        INFO(what << " (" << name << "): " << touched << " elements of unwritten slots changed");
        CHECK(touched == 0);
      }
    }
  }
}

TEMPLATE_TEST_CASE("cuda::swiglu matches cpu::swiglu on fused gate|up rows", "[cuda][ops]", bf16, f16) {
  using T = TestType;
  std::mt19937 rng(404);
  for (const auto& [rows, ffn] : {std::pair<i64, i64>{5, 1536}, {3, 100}, {2, 14336}, {4, 1003}, {1, 8}}) {
    const std::string what = "swiglu " + shape({{"rows", rows}, {"ffn", ffn}});
    const std::vector<float> gate_up = normal(rng, static_cast<std::size_t>(rows * 2 * ffn), 0.0f, 2.0f);
    std::vector<float> ref(static_cast<std::size_t>(rows * ffn));
    for (i64 r = 0; r < rows; ++r)
      chunkwise::cpu::swiglu(gate_up.data() + r * 2 * ffn, gate_up.data() + r * 2 * ffn + ffn, ffn,
                             ref.data() + r * ffn);
    const auto d_in = upload(gate_up);
    auto d_out = poisoned<T>(ref.size());
    cu::swiglu(d_in.get(), rows, ffn, d_out.get(), nullptr);
    sync("swiglu");
    check_close(to_f32(download(d_out.get(), ref.size())), ref, kStorageTol<T>, what);
  }
}

TEMPLATE_TEST_CASE("cuda::gather_rows and the conversions copy exactly", "[cuda][ops]", bf16, f16) {
  using T = TestType;
  std::mt19937 rng(505);
  for (const i64 dim : {i64{576}, i64{100}, i64{4096}}) {
    const i64 n_src = 20;
    const std::vector<T> x = to_storage<T>(normal(rng, static_cast<std::size_t>(n_src * dim)));
    const std::vector<std::int32_t> rows{3, 0, 19, 3, 7};
    const auto n = static_cast<i64>(rows.size());
    const auto d_x = upload(x);
    const auto d_rows = upload(rows);
    auto d_out = poisoned<T>(static_cast<std::size_t>(n * dim));
    cu::gather_rows(d_x.get(), dim, d_rows.get(), n, d_out.get(), nullptr);
    sync("gather_rows");
    const std::vector<float> xf = to_f32(x);
    std::vector<float> ref;
    for (const std::int32_t r : rows) ref.insert(ref.end(), xf.begin() + r * dim, xf.begin() + (r + 1) * dim);
    check_equal(to_f32(download(d_out.get(), ref.size())), ref,
                "gather_rows " + shape({{"dim", dim}, {"n", n}}));
  }

  const i64 n = 1000003;
  std::vector<float> x = normal(rng, static_cast<std::size_t>(n), 0.0f, 100.0f);
  x[0] = 1.0f + 0x1p-8f;   // a tie in bf16: rounds to even
  x[1] = 1.0f + 0x1p-11f;  // a tie in fp16
  x[2] = 3.0e38f;          // fp16: overflows to inf
  x[3] = -1e-40f;          // subnormal
  const auto d_x = upload(x);
  const std::vector<T> expect = to_storage<T>(x);
  // offset 0: the vector path; offset 1: unaligned pointers, the scalar path.
  for (const i64 off : {i64{0}, i64{1}}) {
    const std::string what = "n=" + std::to_string(n - off) + " offset=" + std::to_string(off);
    auto d_h = poisoned<T>(static_cast<std::size_t>(n));
    cu::convert(d_x.get() + off, n - off, d_h.get() + off, nullptr);
    sync("convert to 16-bit");
    const std::vector<T> got = download(d_h.get(), static_cast<std::size_t>(n));
    std::size_t n_diff = 0, first = 0;
    for (auto i = static_cast<std::size_t>(off); i < got.size(); ++i)
      if (std::memcmp(&got[i], &expect[i], sizeof(T)) != 0 && n_diff++ == 0) first = i;
    INFO("convert to 16-bit " << what << ": " << n_diff << " differ, first at " << first);
    CHECK(n_diff == 0);

    auto d_f = poisoned<float>(static_cast<std::size_t>(n));
    cu::convert(d_h.get() + off, n - off, d_f.get() + off, nullptr);
    sync("convert to fp32");
    std::vector<float> back = download(d_f.get(), static_cast<std::size_t>(n));
    std::vector<float> ref = to_f32(expect);
    back.erase(back.begin(), back.begin() + off);
    ref.erase(ref.begin(), ref.begin() + off);
    check_equal(back, ref, "convert to fp32 " + what);
  }
}

TEMPLATE_TEST_CASE("cuda::gather_paged_f32 widens the paged cache rows exactly", "[cuda][ops]", bf16, f16) {
  using T = TestType;
  std::mt19937 rng(606);
  // (block_size, n_kv_heads, head_dim, tokens): vector and scalar paths, partial last block.
  for (const auto& [bs, kvh, hd, n] : {std::tuple{16, 3, 64, 100}, std::tuple{1, 2, 128, 7},
                                       std::tuple{128, 1, 64, 300}, std::tuple{5, 3, 10, 23}}) {
    const int kv_dim = kvh * hd;
    const int n_pages = (n + bs - 1) / bs;
    const int num_blocks = n_pages + 5;
    const std::vector<T> cache =
        to_storage<T>(normal(rng, static_cast<std::size_t>(num_blocks) * bs * kv_dim));
    std::vector<std::int32_t> pages(static_cast<std::size_t>(num_blocks));
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), rng);
    pages.resize(static_cast<std::size_t>(n_pages));
    const auto d_cache = upload(cache);
    const auto d_pages = upload(pages);
    auto d_out = poisoned<float>(static_cast<std::size_t>(n) * kv_dim);
    cu::gather_paged_f32(d_cache.get(), bs, kvh, hd, d_pages.get(), n, d_out.get(), nullptr);
    sync("gather_paged_f32");
    std::vector<float> ref;
    const std::vector<float> cf = to_f32(cache);
    for (int p = 0; p < n; ++p) {
      const auto slot = static_cast<std::size_t>(pages[static_cast<std::size_t>(p / bs)]) * bs + p % bs;
      ref.insert(ref.end(), cf.begin() + static_cast<std::ptrdiff_t>(slot * kv_dim),
                 cf.begin() + static_cast<std::ptrdiff_t>((slot + 1) * kv_dim));
    }
    check_equal(download(d_out.get(), ref.size()), ref,
                "gather_paged_f32 " + shape({{"block_size", bs}, {"kv_dim", kv_dim}, {"tokens", n}}));
  }
  CHECK_THROWS_AS(cu::gather_paged_f32<T>(nullptr, 0, 1, 64, nullptr, 1, nullptr, nullptr), chunkwise::Error);
}

// ---- sampling ----

namespace {

bool greedy(const cu::DeviceSampleRow& p) {
  return p.temperature == 0.0f || p.top_k == 1;
}

// An independent, simple statement of the host sampler's kept set, with the weights in long
// double: kept ids in id order and their inclusive cumulative weights. For sampled rows with a
// finite max logit.
struct KeptCdf {
  std::vector<int> ids;
  std::vector<long double> cum;
  [[nodiscard]] long double mass() const { return cum.empty() ? 0.0L : cum.back(); }
};

KeptCdf kept_cdf(const float* logits, int vocab, const cu::DeviceSampleRow& p) {
  std::vector<int> cand;
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < vocab; ++i)
    if (logits[i] > -std::numeric_limits<float>::infinity()) {
      cand.push_back(i);
      max_logit = std::max(max_logit, logits[i]);
    }
  std::sort(cand.begin(), cand.end(),
            [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  const float inv_t = 1.0f / p.temperature;
  auto weight = [&](int i) { return static_cast<long double>(std::exp((logits[i] - max_logit) * inv_t)); };
  std::size_t kept = cand.size();
  if (p.top_k > 0 && static_cast<std::size_t>(p.top_k) < kept) kept = static_cast<std::size_t>(p.top_k);
  if (p.top_p < 1.0f) {
    long double total = 0.0L;
    for (std::size_t j = 0; j < kept; ++j) total += weight(cand[j]);
    const long double target = static_cast<long double>(p.top_p) * total;
    long double cum = 0.0L;
    std::size_t n = 0;
    while (n < kept && cum < target) cum += weight(cand[n++]);
    kept = std::max<std::size_t>(n, 1);
  }
  KeptCdf out;
  out.ids.assign(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(kept));
  std::sort(out.ids.begin(), out.ids.end());
  long double cum = 0.0L;
  for (const int i : out.ids) out.cum.push_back(cum += weight(i));
  return out;
}

struct SampleStats {
  int greedy_rows = 0, greedy_bad = 0;
  int sampled_rows = 0, sampled_exact = 0, sampled_boundary = 0, sampled_bad = 0;
  std::string details;  // the first mismatches, one per line
};

// Samples `rows` rows of `vocab` logits on the device and with chunkwise::sample(); greedy rows must
// agree exactly, a sampled row either agrees or the host's draw lies within 1e-5 (relative to the
// kept mass) of the boundary between the two tokens.
SampleStats run_sampling(int vocab, int rows, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<std::uint32_t> bits;
  auto pick = [&](auto n) { return static_cast<std::size_t>(bits(rng) % static_cast<std::uint32_t>(n)); };
  const float temps[] = {0.2f, 0.6f, 0.8f, 1.0f, 1.3f, 2.0f, 0.05f};
  const int top_ks[] = {0, 0, 0, 1, 5, 40, 200, 2000};
  const float top_ps[] = {1.0f, 1.0f, 0.5f, 0.8f, 0.9f, 0.95f, 0.99f, 0.01f};
  const float sigmas[] = {1.0f, 2.0f, 4.0f, 8.0f};
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();

  std::vector<float> logits(static_cast<std::size_t>(rows) * static_cast<std::size_t>(vocab));
  std::vector<cu::DeviceSampleRow> params(static_cast<std::size_t>(rows));
  for (int r = 0; r < rows; ++r) {
    float* l = logits.data() + static_cast<std::size_t>(r) * static_cast<std::size_t>(vocab);
    const float sigma = sigmas[pick(4)];
    const int kind = r % 8;
    for (int i = 0; i < vocab; ++i) {
      float x = nd(rng) * sigma;
      if (kind == 1) x = std::round(x * 4.0f) / 4.0f;  // many exact ties
      if (kind == 2 && i % 13 == 5) x = -inf;
      if (kind == 2 && i % 29 == 7) x = nan;
      l[i] = x;
    }
    if (r == 3) l[vocab / 2] = inf;                                       // the host's argmax fallback
    if (r == 11) std::fill(l, l + vocab, -inf);                           // no candidate: token 0
    if (r == 19) std::fill(l, l + vocab, nan);                            // likewise
    if (r == 27) std::fill(l, l + vocab, 0.5f);                           // all tied
    if (r == 35) std::fill(l, l + vocab, -0.0f), l[vocab - 1] = 0.0f;     // -0 and +0 tie
    if (r == 43) std::fill(l, l + vocab - 1, -inf), l[vocab - 1] = 1.0f;  // one candidate
    cu::DeviceSampleRow& p = params[static_cast<std::size_t>(r)];
    p.temperature = r % 4 == 0 ? 0.0f : temps[pick(7)];
    p.top_k = top_ks[pick(8)];
    p.top_p = top_ps[pick(8)];
    p.seed = (static_cast<std::uint64_t>(bits(rng)) << 32) | bits(rng);
    p.step = bits(rng) % 4096;
  }

  const auto d_logits = upload(logits);
  const auto d_params = upload(params);
  auto d_out = poisoned<std::int32_t>(static_cast<std::size_t>(rows));
  auto d_out2 = poisoned<std::int32_t>(static_cast<std::size_t>(rows));
  const std::size_t ws = cu::sample_workspace_bytes(rows, vocab);
  DeviceBuffer<std::byte> d_ws(std::max<std::size_t>(ws, 1));
  cu::sample_tokens(d_logits.get(), rows, vocab, d_params.get(), d_out.get(), d_ws.get(), ws, nullptr);
  cu::sample_tokens(d_logits.get(), rows, vocab, d_params.get(), d_out2.get(), d_ws.get(), ws, nullptr);
  sync("sample_tokens");
  const std::vector<std::int32_t> got = download(d_out.get(), static_cast<std::size_t>(rows));
  const std::vector<std::int32_t> got2 = download(d_out2.get(), static_cast<std::size_t>(rows));
  CHECK(got == got2);  // deterministic

  SampleStats st;
  int reported = 0;
  for (int r = 0; r < rows; ++r) {
    const cu::DeviceSampleRow& p = params[static_cast<std::size_t>(r)];
    const float* l = logits.data() + static_cast<std::size_t>(r) * static_cast<std::size_t>(vocab);
    const chunkwise::TokenId host =
        chunkwise::sample(l, vocab, {p.temperature, p.top_k, p.top_p, p.seed}, p.step);
    const std::int32_t dev = got[static_cast<std::size_t>(r)];
    const bool argmax_path = greedy(p) || r == 3 || r == 11 || r == 19;
    std::ostringstream row;
    row << "vocab " << vocab << " row " << r << " (temperature " << p.temperature << ", top_k " << p.top_k
        << ", top_p " << p.top_p << ", seed " << p.seed << ", step " << p.step << "): host token " << host
        << ", device token " << dev;
    if (argmax_path) {
      ++st.greedy_rows;
      if (dev != host) {
        ++st.greedy_bad;
        if (reported++ < 10) st.details += "greedy/argmax mismatch: " + row.str() + "\n";
      }
      continue;
    }
    ++st.sampled_rows;
    // The reference below is needed only for mismatches; check it against the host on the first
    // sampled rows too, so that a mismatch report can be trusted.
    const bool self_check = st.sampled_rows <= 24;
    if (dev == host && !self_check) {
      ++st.sampled_exact;
      continue;
    }
    const KeptCdf cdf = kept_cdf(l, vocab, p);
    const auto pos = [&](int id) {
      const auto it = std::lower_bound(cdf.ids.begin(), cdf.ids.end(), id);
      return it != cdf.ids.end() && *it == id ? static_cast<std::ptrdiff_t>(it - cdf.ids.begin()) : -1;
    };
    const std::ptrdiff_t ph = pos(host), pd = pos(dev);
    const long double u =
        static_cast<long double>(chunkwise::detail::sample_uniform(p.seed, p.step)) * cdf.mass();
    if (self_check) {
      const long double lo = ph > 0 ? cdf.cum[static_cast<std::size_t>(ph - 1)] : 0.0L;
      const long double hi = ph >= 0 ? cdf.cum[static_cast<std::size_t>(ph)] : -1.0L;
      const long double slack = 1e-9L * cdf.mass();
      INFO("test reference vs host sampler: " << row.str() << "; host token kept: " << (ph >= 0) << ", kept "
                                              << cdf.ids.size());
      CHECK((ph >= 0 && u >= lo - slack && u <= hi + slack));
      if (dev == host) {
        ++st.sampled_exact;
        continue;
      }
    }
    // Near a boundary? Both tokens must be kept and the draw within 1e-5 of the mass from the
    // cumulative weight where one token's interval ends and the other's begins.
    bool near = false;
    long double gap = -1.0L;
    if (ph >= 0 && pd >= 0) {
      const long double boundary = cdf.cum[static_cast<std::size_t>(std::min(ph, pd))];
      gap = std::abs(u - boundary) / cdf.mass();
      near = gap <= 1e-5L;
    }
    if (near) {
      ++st.sampled_boundary;
    } else {
      ++st.sampled_bad;
      if (reported++ < 10) {
        std::ostringstream m;
        m << "sampled mismatch: " << row.str() << "; host token kept: " << (ph >= 0)
          << ", device token kept: " << (pd >= 0) << ", kept " << cdf.ids.size()
          << ", |u - boundary| / mass = " << static_cast<double>(gap) << "\n";
        st.details += m.str();
      }
    }
  }
  std::printf(
      "sample_tokens vocab %d, %d rows: %d argmax rows (%d differ), %d sampled rows: %d identical, %d at a "
      "rounding "
      "boundary, %d wrong\n",
      vocab, rows, st.greedy_rows, st.greedy_bad, st.sampled_rows, st.sampled_exact, st.sampled_boundary,
      st.sampled_bad);
  return st;
}

}  // namespace

TEST_CASE("cuda::sample_tokens draws the host sampler's tokens", "[cuda][ops]") {
  for (const auto& [vocab, rows, seed] : {std::tuple<int, int, std::uint32_t>{49152, 512, 606},
                                          {128256, 48, 607},
                                          {1003, 64, 608},
                                          {7, 16, 609}}) {
    const SampleStats st = run_sampling(vocab, rows, seed);
    INFO("vocab " << vocab << ", rows " << rows << "\n" << st.details);
    CHECK(st.greedy_bad == 0);
    CHECK(st.sampled_bad == 0);
    CHECK(st.sampled_rows > 0);
  }
}

TEST_CASE("cuda::sample_tokens: invalid parameters give -1, no rows is a no-op", "[cuda][ops]") {
  const int vocab = 64;
  std::mt19937 rng(707);
  const std::vector<float> logits = normal(rng, 4 * vocab);
  std::vector<cu::DeviceSampleRow> params(4);
  params[0] = {-1.0f, 0, 1.0f, 1, 0};
  params[1] = {1.0f, -3, 1.0f, 1, 0};
  params[2] = {1.0f, 0, 0.0f, 1, 0};
  params[3] = {std::numeric_limits<float>::quiet_NaN(), 0, 1.0f, 1, 0};
  const auto d_logits = upload(logits);
  const auto d_params = upload(params);
  auto d_out = poisoned<std::int32_t>(4);
  cu::sample_tokens(d_logits.get(), 4, vocab, d_params.get(), d_out.get(), nullptr, 0, nullptr);
  cu::sample_tokens(d_logits.get(), 0, vocab, d_params.get(), d_out.get(), nullptr, 0, nullptr);
  sync("sample_tokens invalid");
  CHECK(download(d_out.get(), 4) == std::vector<std::int32_t>{-1, -1, -1, -1});
}

TEST_CASE("cuda::sampling_expf is the host's expf bit for bit", "[cuda][ops]") {
  // The sampled-token equality relies on it; it holds where the host's libm is glibc on x86-64 with
  // FMA. Elsewhere weights may differ by an ulp, which the sampling test tolerates: warn, and only
  // fail on a real error.
  std::mt19937 rng(808);
  std::uniform_real_distribution<float> dist(-110.0f, 0.0f);
  std::vector<float> x(1 << 22);
  for (float& v : x) v = dist(rng);
  const float specials[] = {0.0f,           -0.0f,          -std::numeric_limits<float>::infinity(),
                            -1e-30f,        -1e-45f,        -87.5f,
                            -88.0f,         -88.7f,         -103.0f,
                            -103.5f,        -104.0f,        -200.0f,
                            -0x1.9fe368p6f, -0x1.9d1d9ep6f, -1.0f,
                            -0.5f};
  std::copy(std::begin(specials), std::end(specials), x.begin());
  const auto d_x = upload(x);
  auto d_y = poisoned<float>(x.size());
  cu::sampling_expf(d_x.get(), static_cast<i64>(x.size()), d_y.get(), nullptr);
  sync("sampling_expf");
  const std::vector<float> y = download(d_y.get(), x.size());
  std::size_t n_diff = 0, first = 0;
  std::int64_t max_ulp = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float ref = std::exp(x[i]);
    const auto a = static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(y[i]));
    const auto b = static_cast<std::int64_t>(std::bit_cast<std::uint32_t>(ref));
    if (a != b && n_diff++ == 0) first = i;
    max_ulp = std::max(max_ulp, std::abs(a - b));
  }
  if (n_diff > 0) {
    WARN("host expf differs from the device's glibc expf on "
         << n_diff << " of " << x.size() << " inputs (first x = " << x[first] << ": device " << y[first]
         << ", host " << std::exp(x[first]) << "): sampled tokens agree up to boundary cases only");
  }
  CHECK(max_ulp <= 2);
}

TEMPLATE_TEST_CASE("cuda::Gemm::linear matches a double-precision product, overwriting and accumulating",
                   "[cuda][ops]", bf16, f16) {
  using T = TestType;
  std::mt19937 rng(505);
  cu::Gemm gemm;
  // Shapes of the default model's and odd ones; x and y also at offsets that lower their
  // alignment (16 and 4 bytes), which is part of a plan's key.
  const std::vector<std::tuple<i64, i64, i64>> shapes = {
      {1, 64, 96}, {7, 576, 960}, {33, 1536, 576}, {300, 256, 520}, {5, 72, 40}};
  for (const auto& [m, k, n] : shapes) {
    for (const i64 x_off : {i64{0}, i64{8}}) {
      for (const i64 y_off : {i64{0}, i64{1}}) {
        for (const float beta : {0.0f, 1.0f}) {
          const std::string what = "linear " + shape({{"m", m},
                                                      {"k", k},
                                                      {"n", n},
                                                      {"x_off", x_off},
                                                      {"y_off", y_off},
                                                      {"beta", static_cast<i64>(beta)}});
          const std::vector<T> x = to_storage<T>(normal(rng, static_cast<std::size_t>(x_off + m * k)));
          const std::vector<T> w = to_storage<T>(normal(rng, static_cast<std::size_t>(n * k), 0.0f, 0.05f));
          const std::vector<float> y0 = normal(rng, static_cast<std::size_t>(y_off + m * n));
          std::vector<float> ref(static_cast<std::size_t>(m * n));
          for (i64 r = 0; r < m; ++r)
            for (i64 c = 0; c < n; ++c) {
              double acc = beta == 0.0f ? 0.0 : y0[static_cast<std::size_t>(y_off + r * n + c)];
              for (i64 i = 0; i < k; ++i)
                acc +=
                    static_cast<double>(static_cast<float>(x[static_cast<std::size_t>(x_off + r * k + i)])) *
                    static_cast<float>(w[static_cast<std::size_t>(c * k + i)]);
              ref[static_cast<std::size_t>(r * n + c)] = static_cast<float>(acc);
            }
          const auto d_x = upload(x);
          const auto d_w = upload(w);
          auto d_y = beta == 0.0f ? poisoned<float>(y0.size()) : upload(y0);
          const std::size_t plans = gemm.plans();
          gemm.linear(d_x.get() + x_off, m, k, d_w.get(), n, d_y.get() + y_off, beta, nullptr);
          sync("linear");
          check_close(download(d_y.get() + y_off, ref.size()), ref, 1e-5, what);
          // The same shape and alignments again: the kept plan, the same result.
          if (beta == 0.0f) {
            CHECK(gemm.plans() <= plans + 1);
            const std::size_t kept = gemm.plans();
            auto d_y2 = poisoned<float>(y0.size());
            gemm.linear(d_x.get() + x_off, m, k, d_w.get(), n, d_y2.get() + y_off, 0.0f, nullptr);
            sync("linear again");
            CHECK(gemm.plans() == kept);
            check_equal(download(d_y2.get() + y_off, ref.size()), download(d_y.get() + y_off, ref.size()),
                        what + " again");
          }
        }
      }
    }
  }
  // m = 0 is a no-op; other sizes outside [1, INT_MAX] are refused.
  const auto d = poisoned<T>(64);
  auto d_y = poisoned<float>(64);
  gemm.linear(d.get(), 0, 8, d.get(), 8, d_y.get(), 0.0f, nullptr);
  for (const auto& [m, k, n] : {std::tuple<i64, i64, i64>{-1, 8, 8}, {1, 0, 8}, {1, 8, i64{1} << 32}}) {
    INFO("m " << m << " k " << k << " n " << n);
    try {
      gemm.linear(d.get(), m, k, d.get(), n, d_y.get(), 0.0f, nullptr);
      FAIL("no error");
    } catch (const chunkwise::Error& e) {
      CHECK(e.code() == chunkwise::ErrorCode::kInvalidArgument);
    }
  }
}
