// SparseIndexBuilder (chunkwise/cuda/sparse_index.hpp): the stock policies' masks built on the GPU
// against the host select() on the same 16-bit q and keys (widened to fp32 for the host).
//  * Planted data (a structure whose selections are separated far beyond rounding) and Streaming
//    on any data: the device mask equals the host mask exactly.
//  * Random data: the device mask is valid (validate()), its recall of the exact attention is
//    within 0.02 of the host mask's and its density within 5% relative (each case prints whether
//    the masks are identical anyway).
//  * Shapes: bf16 and fp16, tiles 64 and 128, GQA 1 and 4, head_dim 64 and 128, chunks from
//    position 0 and from inside a tile, up to 20K keys; the KV cache paged through a shuffled page
//    table with unused slots poisoned with NaN.
//  * Fallbacks (short chunks, dense layers), a batch of several chunks (the assembled
//    seq_row_start and per-chunk rows equal single-chunk builds), the per-layer counts.
//  * End to end: CudaBackend with a pattern selector (device masks) against the same policy
//    through the host probe path (the pattern stripped): logits top-1 agreement >= 0.99 and the
//    same selection counts.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "catch.hpp"
#include "chunkwise/cuda/attention.hpp"
#include "chunkwise/cuda/common.hpp"
#include "chunkwise/cuda/cuda_backend.hpp"
#include "chunkwise/cuda/sparse_index.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"
#include "chunkwise/policy/sparse/sparse_pattern.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"
#include "cuda/attention_fixture.hpp"
#include "cuda/model_compare.hpp"
#include "model/model_fixture.hpp"

namespace {

using namespace chunkwise;
using cuda::BasicPagedKvView;
using cuda::bf16;
using cuda::check_cuda;
using cuda::DeviceBuffer;
using cuda::f16;
using cuda::SparseIndexBuilder;
using cuda::SparseIndexChunk;
using cuda::attention_fixture::Stream;
using cuda::attention_fixture::to_device;

template <class T>
const char* type_name() {
  return std::is_same_v<T, bf16> ? "bf16" : "fp16";
}

struct Shape {
  int tile;
  int n_heads;
  int n_kv_heads;
  int head_dim;
  int query_begin;
  int query_len;
  [[nodiscard]] int kv_len() const { return query_begin + query_len; }
};

std::string describe(const Shape& s) {
  return "tile " + std::to_string(s.tile) + ", " + std::to_string(s.n_heads) + "/" +
         std::to_string(s.n_kv_heads) + " heads, d " + std::to_string(s.head_dim) + ", rows " +
         std::to_string(s.query_begin) + " + " + std::to_string(s.query_len);
}

// The shapes every policy runs on: GQA 1 and 4, d 64 and 128, from 0 and from inside a tile.
std::vector<Shape> shapes() {
  return {{64, 8, 8, 64, 0, 3000},
          {128, 8, 2, 128, 4133, 2900},
          {64, 8, 2, 128, 12037, 8000},
          {128, 8, 8, 64, 9000, 11000}};
}

// One sequence's chunk: q [query_len, n_heads, d] and keys [kv_len, n_kv_heads, d], rounded to T
// (the host sees exactly the stored values), on the device as a paged cache.
template <class T>
class Chunk {
 public:
  static constexpr int kBlock = 16;

  Chunk(const Shape& s, std::vector<float> q, std::vector<float> k, unsigned seed)
      : shape_(s), q_(std::move(q)), k_(std::move(k)) {
    for (float& x : q_) x = static_cast<float>(T(x));
    for (float& x : k_) x = static_cast<float>(T(x));
    const int kv = s.kv_len(), used = (kv + kBlock - 1) / kBlock, blocks = used + 5;
    std::vector<std::int32_t> perm(static_cast<std::size_t>(blocks));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(seed));
    pages_.assign(perm.begin(), perm.begin() + used);
    const std::size_t row = static_cast<std::size_t>(s.n_kv_heads) * s.head_dim;
    std::vector<T> cache(static_cast<std::size_t>(blocks) * kBlock * row,
                         T(std::numeric_limits<float>::quiet_NaN()));
    for (int p = 0; p < kv; ++p) {
      const std::size_t slot =
          static_cast<std::size_t>(pages_[static_cast<std::size_t>(p / kBlock)]) * kBlock +
          static_cast<std::size_t>(p % kBlock);
      for (std::size_t e = 0; e < row; ++e)
        cache[slot * row + e] = T(k_[static_cast<std::size_t>(p) * row + e]);
    }
    std::vector<T> qs(q_.size());
    for (std::size_t i = 0; i < q_.size(); ++i) qs[i] = T(q_[i]);
    dq_ = to_device(qs);
    dk_ = to_device(cache);
    dpages_ = to_device(pages_);
  }

  [[nodiscard]] const Shape& shape() const { return shape_; }
  [[nodiscard]] float scale() const { return 1.0f / std::sqrt(static_cast<float>(shape_.head_dim)); }

  [[nodiscard]] AttentionProbe probe(int layer, int n_layers) const {
    AttentionProbe p;
    p.layer = layer;
    p.n_layers = n_layers;
    p.n_heads = shape_.n_heads;
    p.n_kv_heads = shape_.n_kv_heads;
    p.head_dim = shape_.head_dim;
    p.query_begin = shape_.query_begin;
    p.query_len = shape_.query_len;
    p.kv_len = shape_.kv_len();
    p.scale = scale();
    p.q = q_.data();
    p.k = k_.data();
    return p;
  }

  [[nodiscard]] BasicPagedKvView<T> kv() const {
    return {dk_.get(), dk_.get(), kBlock, shape_.n_kv_heads, shape_.head_dim};
  }
  [[nodiscard]] const T* q() const { return dq_.get(); }
  [[nodiscard]] const std::int32_t* pages() const { return dpages_.get(); }
  [[nodiscard]] SparseIndexChunk index_chunk(int seq) const {
    return {seq, shape_.query_begin, shape_.query_len, shape_.kv_len()};
  }

 private:
  Shape shape_;
  std::vector<float> q_, k_;
  std::vector<std::int32_t> pages_;
  DeviceBuffer<T> dq_, dk_;
  DeviceBuffer<std::int32_t> dpages_;
};

// The device mask of one chunk in `layer`, and a check of the builder's per-layer counts.
template <class T>
BlockMask device_mask(const Chunk<T>& c, const SparsePattern& pattern, int layer, int n_layers, Stream& st) {
  SparseIndexBuilder b;
  const Shape& s = c.shape();
  const SparseIndexChunk ic = c.index_chunk(0);
  b.plan(pattern, {n_layers, s.n_heads, s.n_kv_heads, s.head_dim}, std::span(&ic, 1), 1, st.s);
  if (b.dense_layer(layer)) return dense_mask(c.probe(layer, n_layers), b.tile());
  b.build(0, layer, c.q(), c.kv(), c.pages(), c.scale(), st.s);
  b.finish(layer, st.s);
  BlockMask m = b.download(0, st.s);
  std::vector<std::int32_t> counts(b.counts_size());
  check_cuda(
      cudaMemcpy(counts.data(), b.counts(), counts.size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost),
      "download counts");
  if (!m.dense) {
    CHECK(counts[static_cast<std::size_t>(layer) * 2] == static_cast<std::int32_t>(m.col_index.size()));
    CHECK(counts[static_cast<std::size_t>(layer) * 2 + 1] ==
          static_cast<std::int32_t>(m.column_index.size()));
  }
  return m;
}

BlockMask host_mask(const SparsePattern& pattern, const AttentionProbe& p) {
  return std::visit(
      [&](const auto& params) -> BlockMask {
        using P = std::decay_t<decltype(params)>;
        if constexpr (std::is_same_v<P, StreamingAttentionParams>)
          return StreamingAttention(params).select(p);
        if constexpr (std::is_same_v<P, VerticalSlashAttentionParams>)
          return VerticalSlashAttention(params).select(p);
        if constexpr (std::is_same_v<P, BlockTopKAttentionParams>)
          return BlockTopKAttention(params).select(p);
        if constexpr (std::is_same_v<P, FlexPrefillAttentionParams>)
          return FlexPrefillAttention(params).select(p);
      },
      pattern);
}

// The first row where two masks differ, for the failure message.
std::string first_difference(const BlockMask& a, const BlockMask& b) {
  if (a.dense != b.dense) return std::string("dense ") + (a.dense ? "on the device" : "on the host");
  if (a.rows() != b.rows() || a.row_ptr.size() != b.row_ptr.size()) return "row counts differ";
  auto list = [](const std::vector<std::int32_t>& ptr, const std::vector<std::int32_t>& idx, int r) {
    std::string out;
    if (ptr.empty()) return out;
    for (int i = ptr[static_cast<std::size_t>(r)]; i < ptr[static_cast<std::size_t>(r) + 1]; ++i)
      out += std::to_string(idx[static_cast<std::size_t>(i)]) + " ";
    return out;
  };
  for (int r = 0; r < a.rows(); ++r) {
    const std::string ta = list(a.row_ptr, a.col_index, r), tb = list(b.row_ptr, b.col_index, r);
    const std::string ca = list(a.column_ptr, a.column_index, r), cb = list(b.column_ptr, b.column_index, r);
    if (ta != tb || ca != cb)
      return "row " + std::to_string(r) + " (head " + std::to_string(r / a.n_qtiles) + ", query tile " +
             std::to_string(a.first_qtile + r % a.n_qtiles) + "): device tiles [" + ta + "] columns [" +
             ca.substr(0, 200) + "], host tiles [" + tb + "] columns [" + cb.substr(0, 200) + "]";
  }
  return "none";
}

bool same_mask(const BlockMask& a, const BlockMask& b) {
  if (a.dense != b.dense) return false;
  if (a.dense) return a.tile == b.tile && a.first_qtile == b.first_qtile && a.n_qtiles == b.n_qtiles;
  return a.tile == b.tile && a.n_heads == b.n_heads && a.first_qtile == b.first_qtile &&
         a.n_qtiles == b.n_qtiles && a.row_ptr == b.row_ptr && a.col_index == b.col_index &&
         a.column_ptr == b.column_ptr && a.column_index == b.column_index;
}

// Mean recall over heads of a few rows: first, last and spread in between.
double mean_recall(const AttentionProbe& p, const BlockMask& m) {
  std::vector<int> rows{0, p.query_len - 1};
  for (int i = 1; i < 7; ++i)
    rows.push_back(static_cast<int>(static_cast<std::int64_t>(p.query_len) * i / 7));
  double s = 0;
  for (int h = 0; h < p.n_heads; ++h) s += detail::attention_recall(p, m, h, rows);
  return s / p.n_heads;
}

enum class Data { kRandom, kPlanted };

// Random q and k: normal entries, plus a few keys per head with a larger norm along a direction
// the queries share (a mild attention sink), so that the attention is neither flat nor trivial;
// odd kv heads get a strong sink at key 0 (FlexPrefill: vertical-slash heads, the even ones are
// query-aware, both far from tau).
void random_qk(const Shape& s, std::uint64_t seed, std::vector<float>& q, std::vector<float>& k) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  const int d = s.head_dim, kv = s.kv_len();
  q.resize(static_cast<std::size_t>(s.query_len) * s.n_heads * d);
  k.resize(static_cast<std::size_t>(kv) * s.n_kv_heads * d);
  for (float& x : q) x = n01(rng);
  for (float& x : k) x = n01(rng);
  for (std::size_t r = 0; r < static_cast<std::size_t>(s.query_len) * s.n_heads; ++r) q[r * d] += 2.0f;
  std::uniform_int_distribution<int> pos(0, kv - 1);
  for (int i = 0; i < 40; ++i) {
    const int p = i < 4 ? i : pos(rng);
    for (int h = 0; h < s.n_kv_heads; ++h) k[(static_cast<std::size_t>(p) * s.n_kv_heads + h) * d] += 4.0f;
  }
  for (int h = 1; h < s.n_kv_heads; h += 2) k[static_cast<std::size_t>(h) * d] += 40.0f;
}

// The sizes planted vertical-slash data selects exactly: the forced columns and diagonals plus
// the planted ones.
struct VsPlant {
  int rows = 64;  // last_queries
  std::vector<int> columns, offsets;
};

// Vertical-slash planted: the last `rows` queries carry one code dimension each (1 .. rows); key j
// carries the code of position j + o for every planted offset o (so q . k is large exactly on
// those diagonals), and dimension 0 marks the planted columns for every query. Other dimensions
// hold small noise. Columns >= 30 and offsets >= 100 (beyond the forced ones), columns spaced
// more than `rows` apart.
VsPlant vs_planted(const Shape& s, std::uint64_t seed, std::vector<float>& q, std::vector<float>& k) {
  std::mt19937_64 rng(seed);
  const int d = s.head_dim, n = s.kv_len();
  VsPlant plant;
  plant.rows = std::min(d == 64 ? 48 : 64, s.query_len);
  const int m = plant.rows;
  const float x = d == 64 ? 8.0f : 10.0f, yv = d == 64 ? 10.0f : 12.0f;
  for (int c = 30 + 37; static_cast<int>(plant.columns.size()) < 10 && c < n - m; c += (n - m) / 11 + 1)
    plant.columns.push_back(c);
  for (int o = 100 + 29; static_cast<int>(plant.offsets.size()) < 6 && o < n - m; o += (n - m) / 7 + 3)
    plant.offsets.push_back(o);
  std::uniform_int_distribution<int> noise(-16, 16);  // k / 64: exact in bf16 and fp16
  q.assign(static_cast<std::size_t>(s.query_len) * s.n_heads * d, 0.0f);
  k.assign(static_cast<std::size_t>(n) * s.n_kv_heads * d, 0.0f);
  for (int r = 0; r < s.query_len; ++r) {
    const int p = s.query_begin + r;
    for (int h = 0; h < s.n_heads; ++h) {
      float* row = q.data() + (static_cast<std::size_t>(r) * s.n_heads + h) * d;
      row[0] = x;
      if (p >= n - m) row[1 + p - (n - m)] = x;
      for (int e = m + 1; e < d; ++e) row[e] = static_cast<float>(noise(rng)) / 64.0f;
    }
  }
  for (int j = 0; j < n; ++j) {
    for (int h = 0; h < s.n_kv_heads; ++h) {
      float* row = k.data() + (static_cast<std::size_t>(j) * s.n_kv_heads + h) * d;
      if (std::find(plant.columns.begin(), plant.columns.end(), j) != plant.columns.end()) row[0] = yv;
      for (const int o : plant.offsets)
        if (j + o >= n - m && j + o < n) row[1 + j + o - (n - m)] = x;
      for (int e = m + 1; e < d; ++e) row[e] = static_cast<float>(noise(rng)) / 64.0f;
    }
  }
  return plant;
}

// Block top-k planted: q = (1, 2^-7, 0, ...) everywhere; in key tile c, dimensions 0 and 1 are 1
// on the first n0(c) and n1(c) keys of the tile, with (n0, n1) distinct per tile, so the pooled
// scores n0/T + n1/(128 T) are exact and all different. Other key dimensions hold noise (times a
// zero query component: exact zeros).
void topk_planted(const Shape& s, std::uint64_t seed, std::vector<float>& q, std::vector<float>& k) {
  std::mt19937_64 rng(seed);
  const int d = s.head_dim, n = s.kv_len(), T = s.tile, nk = (n + T - 1) / T;
  std::vector<int> pairs(static_cast<std::size_t>((T + 1) * (T + 1)));
  std::iota(pairs.begin(), pairs.end(), 0);
  std::shuffle(pairs.begin(), pairs.end(), rng);
  REQUIRE(static_cast<int>(pairs.size()) >= nk);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  q.assign(static_cast<std::size_t>(s.query_len) * s.n_heads * d, 0.0f);
  for (std::size_t r = 0; r < static_cast<std::size_t>(s.query_len) * s.n_heads; ++r) {
    q[r * d] = 1.0f;
    q[r * d + 1] = 1.0f / 128.0f;
  }
  k.assign(static_cast<std::size_t>(n) * s.n_kv_heads * d, 0.0f);
  for (int j = 0; j < n; ++j) {
    const int c = j / T, i = j % T;
    for (int h = 0; h < s.n_kv_heads; ++h) {
      const int pair = pairs[static_cast<std::size_t>((c + 7 * h) % nk)];
      float* row = k.data() + (static_cast<std::size_t>(j) * s.n_kv_heads + h) * d;
      row[0] = i < pair / (T + 1) ? 1.0f : 0.0f;
      row[1] = i < pair % (T + 1) ? 1.0f : 0.0f;
      for (int e = 2; e < d; ++e) row[e] = n01(rng);
    }
  }
}

// FlexPrefill planted, by kv head: even ones are query-aware (every query x e0; key tile 0 and
// tile c* hold y0 e0 and y1 e0 on every key, the others zero), odd ones are sink heads (key 0
// holds a large e0 component, the rest small noise): the JS test, the budgets (one tile each with
// min_budget = tile) and the query-aware union are all far from their thresholds.
void flex_planted(const Shape& s, std::uint64_t seed, std::vector<float>& q, std::vector<float>& k) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> noise(-8, 8);
  const int d = s.head_dim, n = s.kv_len(), T = s.tile;
  const int group = s.n_heads / s.n_kv_heads;
  const float x = 8.0f;
  // Logits x * y * scale: about 9.2 and 8.1 for the query-aware tiles, 13 for the sink.
  const float y0 = d == 64 ? 9.0f : 13.0f, y1 = d == 64 ? 8.0f : 11.5f, ysink = d == 64 ? 13.0f : 18.5f;
  const int c_star = std::max(1, (s.query_begin / T) / 2);
  q.assign(static_cast<std::size_t>(s.query_len) * s.n_heads * d, 0.0f);
  for (int r = 0; r < s.query_len; ++r)
    for (int h = 0; h < s.n_heads; ++h) {
      float* row = q.data() + (static_cast<std::size_t>(r) * s.n_heads + h) * d;
      row[0] = x;
      if ((h / group) % 2 == 1)
        for (int e = 1; e < d; ++e) row[e] = static_cast<float>(noise(rng)) / 64.0f;
    }
  k.assign(static_cast<std::size_t>(n) * s.n_kv_heads * d, 0.0f);
  for (int j = 0; j < n; ++j)
    for (int h = 0; h < s.n_kv_heads; ++h) {
      float* row = k.data() + (static_cast<std::size_t>(j) * s.n_kv_heads + h) * d;
      if (h % 2 == 0) {
        row[0] = j / T == 0 ? y0 : (j / T == c_star ? y1 : 0.0f);
      } else {
        row[0] = j == 0 ? ysink : 0.0f;
        for (int e = 1; e < d; ++e) row[e] = static_cast<float>(noise(rng)) / 64.0f;
      }
    }
}

SparseFallback fallback(std::vector<int> dense_layers = {}) {
  SparseFallback f;
  f.min_kv_len = 1024;
  f.dense_layers = std::move(dense_layers);
  return f;
}

// The pattern of each policy for a shape (planted: the sizes its data selects exactly).
SparsePattern streaming(const Shape& s) {
  return StreamingAttentionParams{s.tile, 100, 700, fallback()};
}
SparsePattern block_topk(const Shape& s) {
  return BlockTopKAttentionParams{s.tile, 8, fallback()};
}
SparsePattern flex(const Shape& s, Data data) {
  FlexPrefillAttentionParams p;
  p.tile = s.tile;
  p.min_budget = data == Data::kPlanted ? s.tile : 1024;
  p.fallback = fallback();
  return p;
}
SparsePattern vertical_slash(const Shape& s, Data data, const VsPlant* plant) {
  VerticalSlashAttentionParams p;
  p.tile = s.tile;
  p.fallback = fallback();
  if (data == Data::kPlanted) {
    p.last_queries = plant->rows;
    p.config.default_sizes = {30 + static_cast<int>(plant->columns.size()),
                              100 + static_cast<int>(plant->offsets.size()), false};
    p.config.heads = {
        std::vector<VerticalSlashSizes>(static_cast<std::size_t>(s.n_heads), p.config.default_sizes)};
    p.config.heads[0][1].dense = true;
  } else {
    p.config.default_sizes = {200, 400, false};
    // Layer 0: per-head sizes, one dense head, one head with fewer sizes than forced.
    std::vector<VerticalSlashSizes> l0(static_cast<std::size_t>(s.n_heads), {300, 600, false});
    l0[1] = {0, 0, true};
    l0[2] = {10, 20, false};
    l0[3] = {1000, 3000, false};
    p.config.heads = {l0};
  }
  return p;
}

template <class T>
void run_policy(const char* name, Data data) {
  Stream st;
  std::uint64_t seed = 1234;
  for (const Shape& s : shapes()) {
    ++seed;
    std::vector<float> q, k;
    VsPlant plant;
    SparsePattern pattern;
    const std::string policy = name;
    if (data == Data::kRandom) random_qk(s, seed, q, k);
    if (policy == "streaming") {
      if (data == Data::kPlanted) random_qk(s, seed, q, k);  // no probe: any data is "planted"
      pattern = streaming(s);
    } else if (policy == "vertical-slash") {
      if (data == Data::kPlanted) plant = vs_planted(s, seed, q, k);
      pattern = vertical_slash(s, data, &plant);
    } else if (policy == "block-topk") {
      if (data == Data::kPlanted) topk_planted(s, seed, q, k);
      pattern = block_topk(s);
    } else {
      if (data == Data::kPlanted) flex_planted(s, seed, q, k);
      pattern = flex(s, data);
    }
    const Chunk<T> chunk(s, std::move(q), std::move(k), static_cast<unsigned>(seed));
    const int n_layers = 2;
    const AttentionProbe probe = chunk.probe(0, n_layers);
    const BlockMask dev = device_mask(chunk, pattern, 0, n_layers, st);
    const BlockMask host = host_mask(pattern, probe);
    const bool same = same_mask(dev, host);
    INFO(name << (data == Data::kPlanted ? " planted" : " random") << ", " << type_name<T>() << ", "
              << describe(s) << ": first difference " << first_difference(dev, host));
    REQUIRE_NOTHROW(validate(dev, probe));
    REQUIRE(!dev.dense);
    const double dd = mask_cost(dev).density(), dh = mask_cost(host).density();
    if (data == Data::kPlanted) {
      std::printf("sparse index %s planted %s %s: density %.4f, identical %s\n", name, type_name<T>(),
                  describe(s).c_str(), dd, same ? "yes" : "NO");
      CHECK(same);
    } else {
      const double rd = mean_recall(probe, dev), rh = mean_recall(probe, host);
      std::printf(
          "sparse index %s random %s %s: density device %.4f host %.4f, recall device %.4f host %.4f, "
          "identical %s\n",
          name, type_name<T>(), describe(s).c_str(), dd, dh, rd, rh, same ? "yes" : "no");
      CHECK(std::abs(rd - rh) <= 0.02);
      CHECK(std::abs(dd / dh - 1.0) <= 0.05);
    }
  }
}

}  // namespace

TEST_CASE("Device masks of streaming attention equal the host's", "[cuda][sparse][sparse_index]") {
  run_policy<bf16>("streaming", Data::kPlanted);
  run_policy<f16>("streaming", Data::kPlanted);
}

TEST_CASE("Device masks of vertical-slash attention match the host's", "[cuda][sparse][sparse_index]") {
  run_policy<bf16>("vertical-slash", Data::kPlanted);
  run_policy<f16>("vertical-slash", Data::kPlanted);
  run_policy<bf16>("vertical-slash", Data::kRandom);
  run_policy<f16>("vertical-slash", Data::kRandom);
}

TEST_CASE("Device masks of block top-k attention match the host's", "[cuda][sparse][sparse_index]") {
  run_policy<bf16>("block-topk", Data::kPlanted);
  run_policy<f16>("block-topk", Data::kPlanted);
  run_policy<bf16>("block-topk", Data::kRandom);
  run_policy<f16>("block-topk", Data::kRandom);
}

TEST_CASE("Device masks of FlexPrefill attention match the host's", "[cuda][sparse][sparse_index]") {
  run_policy<bf16>("flex-prefill", Data::kPlanted);
  run_policy<f16>("flex-prefill", Data::kPlanted);
  run_policy<bf16>("flex-prefill", Data::kRandom);
  run_policy<f16>("flex-prefill", Data::kRandom);
}

TEST_CASE("Device masks follow the fallbacks and assemble a batch", "[cuda][sparse][sparse_index]") {
  Stream st;
  const Shape a{64, 8, 2, 128, 0, 2000}, b{64, 8, 2, 128, 3017, 1500}, small{64, 8, 2, 128, 0, 700};
  std::vector<float> q, k;
  random_qk(a, 1, q, k);
  const Chunk<bf16> ca(a, q, k, 1);
  random_qk(b, 2, q, k);
  const Chunk<bf16> cb(b, q, k, 2);
  random_qk(small, 3, q, k);
  const Chunk<bf16> cs(small, q, k, 3);
  const int n_layers = 3;

  for (const char* name : {"streaming", "vertical-slash", "block-topk", "flex-prefill"}) {
    INFO(name);
    const std::string policy = name;
    auto pattern_for = [&](const Shape& s) -> SparsePattern {
      SparsePattern p = policy == "streaming"        ? streaming(s)
                        : policy == "vertical-slash" ? vertical_slash(s, Data::kRandom, nullptr)
                        : policy == "block-topk"     ? block_topk(s)
                                                     : flex(s, Data::kRandom);
      std::visit([](auto& x) { x.fallback.dense_layers = {2}; }, p);
      return p;
    };
    const SparsePattern pattern = pattern_for(a);

    // A chunk below min_kv_len and a dense layer: dense, as on the host.
    CHECK(device_mask(cs, pattern, 0, n_layers, st).dense);
    CHECK(host_mask(pattern, cs.probe(0, n_layers)).dense);
    CHECK(device_mask(ca, pattern, 2, n_layers, st).dense);
    CHECK(host_mask(pattern, ca.probe(2, n_layers)).dense);

    // A batch: sequence 0 = a, 1 = a decode row (no chunk), 2 = b, 3 = the short chunk (dense).
    SparseIndexBuilder builder;
    const std::vector<SparseIndexChunk> chunks{ca.index_chunk(0), cb.index_chunk(2), cs.index_chunk(3)};
    builder.plan(pattern, {n_layers, 8, 2, 128}, chunks, 4, st.s);
    REQUIRE(builder.dense_chunk(2));
    REQUIRE(!builder.dense_chunk(0));
    for (int layer = 0; layer < 2; ++layer) {
      builder.build(0, layer, ca.q(), ca.kv(), ca.pages(), ca.scale(), st.s);
      builder.build(1, layer, cb.q(), cb.kv(), cb.pages(), cb.scale(), st.s);
      builder.build(2, layer, cs.q(), cs.kv(), cs.pages(), cs.scale(), st.s);  // dense: nothing
      const cuda::BlockSparseMaskView& view = builder.finish(layer, st.s);
      CHECK(view.tile == 64);
      CHECK((view.column_ptr != nullptr) == (policy == "vertical-slash"));
      const BlockMask ma = builder.download(0, st.s), mb = builder.download(1, st.s);
      CHECK(builder.download(2, st.s).dense);
      // The same rows as single-chunk builds (deterministic), valid for their chunks.
      CHECK(same_mask(ma, device_mask(ca, pattern, layer, n_layers, st)));
      CHECK(same_mask(mb, device_mask(cb, pattern, layer, n_layers, st)));
      CHECK_NOTHROW(validate(ma, ca.probe(layer, n_layers)));
      CHECK_NOTHROW(validate(mb, cb.probe(layer, n_layers)));
      std::vector<std::int32_t> srs(5);
      check_cuda(cudaMemcpy(srs.data(), view.seq_row_start, srs.size() * sizeof(std::int32_t),
                            cudaMemcpyDeviceToHost),
                 "download seq_row_start");
      const int ra = ma.rows(), rb = mb.rows();
      CHECK(srs == std::vector<std::int32_t>{0, ra, ra, ra + rb, ra + rb});
      std::vector<std::int32_t> counts(builder.counts_size());
      check_cuda(cudaMemcpy(counts.data(), builder.counts(), counts.size() * sizeof(std::int32_t),
                            cudaMemcpyDeviceToHost),
                 "download counts");
      const std::size_t at = static_cast<std::size_t>(layer) * 3 * 2;
      CHECK(counts[at] == static_cast<std::int32_t>(ma.col_index.size()));
      CHECK(counts[at + 1] == static_cast<std::int32_t>(ma.column_index.size()));
      CHECK(counts[at + 2] == static_cast<std::int32_t>(mb.col_index.size()));
      CHECK(counts[at + 4] == 0);
    }
    CHECK(builder.dense_layer(2));
    BlockMask summary;
    builder.summary(0, 1234, 56, summary);
    CHECK(std::abs(mask_cost(summary).computed_tiles - (1234 + 56.0 / 64)) < 1e-9);
    CHECK(mask_cost(summary).causal_tiles ==
          mask_cost(explicit_dense_mask(ca.probe(0, n_layers), 64)).causal_tiles);
  }
}

namespace {

// The same policy without its pattern: CudaBackend probes it on the host.
template <class P>
class HostOnly final : public SparseSelector {
 public:
  explicit HostOnly(P policy) : inner_(std::move(policy)) {}
  [[nodiscard]] int tile() const override { return inner_.tile(); }
  [[nodiscard]] int min_kv_len() const override { return inner_.min_kv_len(); }
  BlockMask select(const AttentionProbe& probe) override { return inner_.select(probe); }
  [[nodiscard]] const SparseStats& stats() const { return inner_.stats(); }

 private:
  PolicySelector<P> inner_;
};

struct TextChunk {
  int begin;
  int n;
};

ForwardBatch text_batch(const std::vector<TokenId>& ids, const std::vector<std::int32_t>& pages, TextChunk c,
                        int bs) {
  ForwardBatch b;
  b.query_start = {0};
  b.page_start = {0};
  for (int i = c.begin; i < c.begin + c.n; ++i) {
    const auto row = static_cast<std::int32_t>(b.tokens.size());
    b.tokens.push_back(ids[static_cast<std::size_t>(i)]);
    b.positions.push_back(i);
    b.slots.push_back(static_cast<std::int64_t>(pages[static_cast<std::size_t>(i / bs)]) * bs + i % bs);
    if (i % 4 == 0 || i == c.begin + c.n - 1) b.logit_rows.push_back(row);
  }
  const int used = (c.begin + c.n + bs - 1) / bs;
  b.pages.assign(pages.begin(), pages.begin() + used);
  b.query_start.push_back(static_cast<std::int32_t>(b.tokens.size()));
  b.page_start.push_back(static_cast<std::int32_t>(b.pages.size()));
  b.kv_len.push_back(c.begin + c.n);
  return b;
}

template <class P>
void end_to_end(const std::shared_ptr<const Model>& model, const char* name, typename P::Params params) {
  const int n = 1500, bs = 16, vocab = model->config().vocab;
  const std::vector<TokenId> ids = cuda_test::natural_text(*model, n);
  const int blocks = (n + bs - 1) / bs + 4;
  std::vector<std::int32_t> pages(static_cast<std::size_t>(blocks));
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937(7));
  PolicySelector<P> on_device{P(params)};
  HostOnly<P> on_host{P(params)};
  REQUIRE(on_device.pattern() != nullptr);
  REQUIRE(static_cast<const SparseSelector&>(on_host).pattern() == nullptr);
  auto run = [&](SparseSelector* sel) {
    cuda::CudaBackend backend(model, blocks, bs);
    std::vector<float> all;
    for (const TextChunk c : {TextChunk{0, 700}, TextChunk{700, 800}}) {
      ForwardBatch b = text_batch(ids, pages, c, bs);
      b.sparse = sel;
      std::vector<float> logits(b.logit_rows.size() * static_cast<std::size_t>(vocab));
      backend.forward(b, logits);
      all.insert(all.end(), logits.begin(), logits.end());
    }
    return all;
  };
  const std::vector<float> dev = run(&on_device), host = run(&on_host);
  const cuda_test::Agreement agr = cuda_test::compare(host, dev, vocab);
  const SparseStats& sd = on_device.stats();
  const SparseStats& sh = on_host.stats();
  std::printf(
      "sparse index end to end, %s: top-1 %.4f, KL mean %.2e; selections %lld / %lld, dense %lld / %lld, "
      "density "
      "device %.4f host %.4f, mask building %.2f ms on the GPU, %.2f ms select() on the host\n",
      name, agr.top1, agr.mean_kl, static_cast<long long>(sd.selections),
      static_cast<long long>(sh.selections), static_cast<long long>(sd.dense_fallbacks),
      static_cast<long long>(sh.dense_fallbacks), sd.density(), sh.density(), sd.select_s * 1e3,
      sh.select_s * 1e3);
  INFO(name);
  CHECK(agr.top1 >= 0.99);
  CHECK(sd.selections == sh.selections);
  CHECK(sd.dense_fallbacks == sh.dense_fallbacks);
  CHECK(sd.causal_tiles == sh.causal_tiles);
  CHECK(std::abs(sd.density() - sh.density()) <= 0.05 * sh.density());
  CHECK(sd.select_s > 0);
}

}  // namespace

TEST_CASE("GPU sparse prefill with device masks matches the host probe path",
          "[cuda][model][sparse][sparse_index]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  SparseFallback fb;
  fb.min_kv_len = 256;
  fb.dense_layers = {0};
  end_to_end<StreamingAttention>(model, "streaming", {64, 64, 256, fb});
  VerticalSlashAttentionParams vs;
  vs.tile = 64;
  vs.config.default_sizes = {100, 200, false};
  vs.fallback = fb;
  end_to_end<VerticalSlashAttention>(model, "vertical-slash", vs);
  end_to_end<BlockTopKAttention>(model, "block-topk", {64, 6, fb});
  FlexPrefillAttentionParams fp;
  fp.min_budget = 256;
  fp.fallback = fb;
  end_to_end<FlexPrefillAttention>(model, "flex-prefill", fp);
}
