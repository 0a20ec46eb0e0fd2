// Block-sparse prefill attention over a paged KV cache: one sequence's chunk, attended through a
// BlockMask (kept key tiles per query tile and head, plus extra key columns).

// GCC 12 with AVX-512 reports -W(maybe-)uninitialized inside Eigen's GEMM packing, a false positive
// (see matmul.cpp), silenced for this file before any header pulls in the intrinsics.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"
#include "ops_detail.hpp"

namespace chunkwise::cpu {
namespace {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowMap = Eigen::Map<RowMatrix>;
using ConstRowMap = Eigen::Map<const RowMatrix>;

// Keys per softmax step: the scores of one step (query vectors x kKeyChunk) stay in L2, and the
// scratch does not grow with the context.
constexpr int kKeyChunk = 512;

// One unit of parallel work: query tile first_qtile + qtile of the chunk, for the query heads of
// one KV head.
struct WorkItem {
  int kv_head;
  int qtile;
  std::int64_t cost;
};

// Per-thread buffers, grown on demand.
struct Scratch {
  std::vector<float> q, k, v, s, o, m, l;
};

void grow(std::vector<float>& buf, std::int64_t n) {
  if (static_cast<std::int64_t>(buf.size()) < n) buf.resize(static_cast<std::size_t>(n));
}

struct Geometry {
  const PagedKv& cache;
  std::span<const std::int32_t> pages;
  const BlockMask& mask;
  int n_heads, group, d, query_begin, kv_len;
  float scale;
  std::int64_t kv_dim, q_stride;

  [[nodiscard]] std::span<const std::int32_t> tiles(int head, int qtile) const {
    const auto r = static_cast<std::size_t>(head) * static_cast<std::size_t>(mask.n_qtiles) +
                   static_cast<std::size_t>(qtile);
    return {mask.col_index.data() + mask.row_ptr[r], mask.col_index.data() + mask.row_ptr[r + 1]};
  }
  [[nodiscard]] std::span<const std::int32_t> columns(int head, int qtile) const {
    if (!mask.has_columns()) return {};
    const auto r = static_cast<std::size_t>(head) * static_cast<std::size_t>(mask.n_qtiles) +
                   static_cast<std::size_t>(qtile);
    return {mask.column_index.data() + mask.column_ptr[r], mask.column_index.data() + mask.column_ptr[r + 1]};
  }
  [[nodiscard]] std::int64_t offset(int kv_head, int pos) const {
    return pages[static_cast<std::size_t>(pos / cache.block_size)] * cache.block_stride() +
           (pos % cache.block_size) * kv_dim + static_cast<std::int64_t>(kv_head) * d;
  }
};

bool same_span(std::span<const std::int32_t> a, std::span<const std::int32_t> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

// Heads [h0, h1) of one GQA group share the mask row (tiles, columns) of query tile j: one gather,
// their query vectors stacked into one product. Query positions [p0, p1).
void attend_heads(const Geometry& g, int kv_head, int h0, int h1, int j, int p0, int p1, Scratch& w,
                  float* out, const float* q) {
  const int d = g.d, tile = g.mask.tile;
  const int t = g.mask.first_qtile + j;
  const auto tiles = g.tiles(h0, j);
  const auto cols = g.columns(h0, j);
  const int nq = p1 - p0;
  const int n_vec = (h1 - h0) * nq;

  // Key list: the kept tiles in order (the diagonal one, if kept, last and cut at p1), then the
  // columns. Row at position p sees keys [0, limit(p)) and [col_begin, nk).
  int nk = 0;
  bool has_diag = false;
  int diag_begin = 0;
  for (const std::int32_t c : tiles) {
    const int b = c * tile;
    const int e = std::min(b + tile, p1);
    if (c == t) {
      has_diag = true;
      diag_begin = nk;
    }
    nk += e - b;
  }
  const int col_begin = nk;
  nk += static_cast<int>(cols.size());

  if (nk == 0) {
    for (int h = h0; h < h1; ++h) {
      for (int p = p0; p < p1; ++p) {
        float* dst = out + (p - g.query_begin) * g.q_stride + static_cast<std::int64_t>(h) * d;
        std::fill(dst, dst + d, 0.0f);
      }
    }
    return;
  }

  // Gather K and V rows [nk, d].
  grow(w.k, static_cast<std::int64_t>(nk) * d);
  grow(w.v, static_cast<std::int64_t>(nk) * d);
  const std::size_t row_bytes = static_cast<std::size_t>(d) * sizeof(float);
  int at = 0;
  auto gather = [&](int pos) {
    const std::int64_t off = g.offset(kv_head, pos);
    std::memcpy(w.k.data() + static_cast<std::ptrdiff_t>(at) * d, g.cache.k + off, row_bytes);
    std::memcpy(w.v.data() + static_cast<std::ptrdiff_t>(at) * d, g.cache.v + off, row_bytes);
    ++at;
  };
  for (const std::int32_t c : tiles) {
    const int e = std::min(c * tile + tile, p1);
    for (int pos = c * tile; pos < e; ++pos) gather(pos);
  }
  for (const std::int32_t c : cols) gather(c);

  // Scaled query vectors, vector i = head h0 + i / nq at position p0 + i % nq.
  grow(w.q, static_cast<std::int64_t>(n_vec) * d);
  for (int h = h0; h < h1; ++h) {
    for (int p = p0; p < p1; ++p) {
      const float* src = q + (p - g.query_begin) * g.q_stride + static_cast<std::int64_t>(h) * d;
      float* dst = w.q.data() + (static_cast<std::ptrdiff_t>(h - h0) * nq + (p - p0)) * d;
      for (int x = 0; x < d; ++x) dst[x] = src[x] * g.scale;
    }
  }

  const int chunk = std::min(nk, kKeyChunk);
  grow(w.s, static_cast<std::int64_t>(n_vec) * chunk);
  grow(w.o, static_cast<std::int64_t>(n_vec) * d);
  grow(w.m, n_vec);
  grow(w.l, n_vec);
  std::fill(w.m.begin(), w.m.begin() + n_vec, -std::numeric_limits<float>::infinity());
  std::fill(w.l.begin(), w.l.begin() + n_vec, 0.0f);
  const ConstRowMap qm(w.q.data(), n_vec, d);
  RowMap om(w.o.data(), n_vec, d);
  om.setZero();

  for (int k0 = 0; k0 < nk; k0 += kKeyChunk) {
    const int kc = std::min(kKeyChunk, nk - k0);
    const ConstRowMap km(w.k.data() + static_cast<std::ptrdiff_t>(k0) * d, kc, d);
    const ConstRowMap vm(w.v.data() + static_cast<std::ptrdiff_t>(k0) * d, kc, d);
    RowMap sm(w.s.data(), n_vec, kc);
    sm.noalias() = qm * km.transpose();

    for (int i = 0; i < n_vec; ++i) {
      const int p = p0 + i % nq;
      // Visible within this chunk: [k0, a1) and [b0, k0 + kc), relative to k0 below.
      const int limit = has_diag ? diag_begin + (p - t * tile) + 1 : col_begin;
      const int a1 = std::clamp(limit, k0, k0 + kc) - k0;
      const int b0 = std::clamp(col_begin, k0, k0 + kc) - k0;
      auto srow = sm.row(i).array();
      if (a1 == 0 && b0 == kc) {
        srow.setZero();
        continue;
      }
      float cmax = -std::numeric_limits<float>::infinity();
      if (a1 > 0) cmax = std::max(cmax, srow.head(a1).maxCoeff());
      if (b0 < kc) cmax = std::max(cmax, srow.tail(kc - b0).maxCoeff());
      float& m = w.m[static_cast<std::size_t>(i)];
      float& l = w.l[static_cast<std::size_t>(i)];
      const float m_new = std::max(m, cmax);
      const float correction = std::exp(m - m_new);  // 0 on the first visible chunk
      float sum = 0.0f;
      if (a1 > 0) {
        srow.head(a1) = (srow.head(a1) - m_new).exp();
        sum += srow.head(a1).sum();
      }
      if (b0 > a1) srow.segment(a1, b0 - a1).setZero();
      if (b0 < kc) {
        srow.tail(kc - b0) = (srow.tail(kc - b0) - m_new).exp();
        sum += srow.tail(kc - b0).sum();
      }
      l = l * correction + sum;
      m = m_new;
      if (correction != 1.0f) om.row(i) *= correction;
    }
    om.noalias() += sm * vm;
  }

  for (int i = 0; i < n_vec; ++i) {
    const int h = h0 + i / nq, p = p0 + i % nq;
    float* dst = out + (p - g.query_begin) * g.q_stride + static_cast<std::int64_t>(h) * d;
    const float l = w.l[static_cast<std::size_t>(i)];
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    const float* src = w.o.data() + static_cast<std::ptrdiff_t>(i) * d;
    for (int x = 0; x < d; ++x) dst[x] = src[x] * inv;
  }
}

void attend(const Geometry& g, const WorkItem& item, Scratch& w, const float* q, float* out) {
  const int tile = g.mask.tile, t = g.mask.first_qtile + item.qtile;
  const int p0 = std::max(t * tile, g.query_begin);
  const int p1 = std::min(t * tile + tile, g.kv_len);
  const int h_end = (item.kv_head + 1) * g.group;
  for (int h0 = item.kv_head * g.group; h0 < h_end;) {
    int h1 = h0 + 1;
    while (h1 < h_end && same_span(g.tiles(h1, item.qtile), g.tiles(h0, item.qtile)) &&
           same_span(g.columns(h1, item.qtile), g.columns(h0, item.qtile))) {
      ++h1;
    }
    attend_heads(g, item.kv_head, h0, h1, item.qtile, p0, p1, w, out, q);
    h0 = h1;
  }
}

}  // namespace

void sparse_attention(const float* q, const PagedKv& cache, std::span<const std::int32_t> pages,
                      int query_begin, int query_len, const BlockMask& mask, int n_heads, float scale,
                      float* out) {
  check(cache.k != nullptr && cache.v != nullptr, ErrorCode::kInvalidArgument,
        "sparse_attention: cache has no K or V storage");
  check(cache.block_size > 0 && cache.n_kv_heads > 0 && cache.head_dim > 0, ErrorCode::kInvalidArgument,
        "sparse_attention: cache needs block_size, n_kv_heads and head_dim > 0");
  if (!(n_heads > 0 && n_heads % cache.n_kv_heads == 0)) {
    throw Error(ErrorCode::kInvalidArgument, "sparse_attention: n_heads (" + std::to_string(n_heads) +
                                                 ") must be a positive multiple of n_kv_heads (" +
                                                 std::to_string(cache.n_kv_heads) + ")");
  }
  check(query_begin >= 0 && query_len >= 0 &&
            static_cast<std::int64_t>(query_begin) + query_len <= std::numeric_limits<std::int32_t>::max(),
        ErrorCode::kInvalidArgument, "sparse_attention: bad query_begin or query_len");
  check(query_len == 0 || (q != nullptr && out != nullptr), ErrorCode::kInvalidArgument,
        "sparse_attention: null q or out");
  const int kv_len = query_begin + query_len;
  const std::int64_t needed_pages =
      (static_cast<std::int64_t>(kv_len) + cache.block_size - 1) / cache.block_size;
  if (static_cast<std::int64_t>(pages.size()) < needed_pages) {
    throw Error(ErrorCode::kInvalidArgument, "sparse_attention: " + std::to_string(pages.size()) +
                                                 " pages of " + std::to_string(cache.block_size) +
                                                 " tokens cannot hold " + std::to_string(kv_len) + " keys");
  }
  for (std::int64_t i = 0; i < needed_pages; ++i) {
    check(pages[static_cast<std::size_t>(i)] >= 0, ErrorCode::kInvalidArgument,
          "sparse_attention: negative page index");
  }
  AttentionProbe probe;
  probe.n_heads = n_heads;
  probe.n_kv_heads = cache.n_kv_heads;
  probe.head_dim = cache.head_dim;
  probe.query_begin = query_begin;
  probe.query_len = query_len;
  probe.kv_len = kv_len;
  probe.scale = scale;
  probe.q = q;
  validate(mask, probe);
  if (query_len == 0) return;

  if (mask.dense) {
    const std::vector<std::int32_t> query_start = {0, query_len};
    const std::vector<std::int32_t> page_start = {0, static_cast<std::int32_t>(needed_pages)};
    const std::vector<std::int32_t> kv = {kv_len};
    std::vector<std::int32_t> q_pos(static_cast<std::size_t>(query_len));
    for (int r = 0; r < query_len; ++r) q_pos[static_cast<std::size_t>(r)] = query_begin + r;
    const AttentionBatch batch{query_start, page_start, pages.first(static_cast<std::size_t>(needed_pages)),
                               kv, q_pos};
    paged_attention(q, cache, batch, n_heads, scale, out);
    return;
  }

  const int group = n_heads / cache.n_kv_heads;
  const Geometry g{cache,
                   pages,
                   mask,
                   n_heads,
                   group,
                   cache.head_dim,
                   query_begin,
                   kv_len,
                   scale,
                   static_cast<std::int64_t>(cache.n_kv_heads) * cache.head_dim,
                   static_cast<std::int64_t>(n_heads) * cache.head_dim};

  std::vector<WorkItem> items;
  items.reserve(static_cast<std::size_t>(cache.n_kv_heads) * static_cast<std::size_t>(mask.n_qtiles));
  std::int64_t total_cost = 0;
  for (int j = 0; j < mask.n_qtiles; ++j) {
    const int t = mask.first_qtile + j;
    const int nq = std::min(t * mask.tile + mask.tile, kv_len) - std::max(t * mask.tile, query_begin);
    for (int kvh = 0; kvh < cache.n_kv_heads; ++kvh) {
      std::int64_t keys = 0;
      for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
        keys += static_cast<std::int64_t>(g.tiles(h, j).size()) * mask.tile +
                static_cast<std::int64_t>(g.columns(h, j).size());
      }
      // Work ~ (query vectors + a gather) x keys x head_dim, times 2 for QK^T and PV.
      const std::int64_t cost = (nq + 2) * keys * cache.head_dim * 2;
      items.push_back({kvh, j, cost});
      total_cost += cost;
    }
  }
  // Longest first, so dynamic scheduling does not end with one thread on the largest item.
  std::stable_sort(items.begin(), items.end(),
                   [](const WorkItem& a, const WorkItem& b) { return a.cost > b.cost; });

  const int threads = std::min<int>(detail::threads_for(total_cost), static_cast<int>(items.size()));
#pragma omp parallel num_threads(std::max(threads, 1)) if (threads > 1)
  {
    Scratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (std::size_t i = 0; i < items.size(); ++i) attend(g, items[i], scratch, q, out);
  }
}

}  // namespace chunkwise::cpu
