// Paged KV cache writes and ragged-batch paged attention (causal, grouped-query).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"
#include "ops_detail.hpp"

namespace chunkwise::cpu {
namespace detail {
namespace {

// Keys per inner step: one max/rescale per query vector per chunk, while the chunk's K and V rows
// (64 x head_dim each) stay in L1/L2 across the tile's query blocks.
constexpr int kKeyChunk = 64;
// Query vectors (query rows x heads of one GQA group) per work item: each gathered K/V chunk is
// reused this many times.
constexpr int kTileVectors = 64;

// One unit of parallel work: the query rows [row_begin, row_end) of one sequence against one KV
// head, over cache positions [0, kv_end).
struct WorkItem {
  std::int32_t seq;
  std::int32_t kv_head;
  std::int32_t row_begin;
  std::int32_t row_end;
  std::int32_t kv_end;
  std::int64_t cost;
};

void validate_batch(const PagedKv& cache, const AttentionBatch& b, int n_heads) {
  check(cache.k != nullptr && cache.v != nullptr, ErrorCode::kInvalidArgument,
        "paged_attention: cache has no K or V storage");
  check(cache.block_size > 0 && cache.n_kv_heads > 0 && cache.head_dim > 0, ErrorCode::kInvalidArgument,
        "paged_attention: cache needs block_size, n_kv_heads and head_dim > 0");
  if (!(n_heads > 0 && n_heads % cache.n_kv_heads == 0)) {
    throw Error(ErrorCode::kInvalidArgument, "paged_attention: n_heads (" + std::to_string(n_heads) +
                                                 ") must be a positive multiple of n_kv_heads (" +
                                                 std::to_string(cache.n_kv_heads) + ")");
  }
  check(!b.query_start.empty(), ErrorCode::kInvalidArgument, "paged_attention: query_start is empty");
  const std::size_t n_seq = b.query_start.size() - 1;
  if (!(b.page_start.size() == n_seq + 1 && b.kv_len.size() == n_seq)) {
    throw Error(ErrorCode::kInvalidArgument,
                "paged_attention: query_start has " + std::to_string(b.query_start.size()) +
                    " entries, page_start " + std::to_string(b.page_start.size()) + " and kv_len " +
                    std::to_string(b.kv_len.size()) + "; expected n_seq + 1, n_seq + 1 and n_seq");
  }
  check(b.query_start[0] == 0 && b.page_start[0] == 0, ErrorCode::kInvalidArgument,
        "paged_attention: query_start and page_start must start at 0");
  for (std::size_t s = 0; s < n_seq; ++s) {
    check(b.query_start[s + 1] >= b.query_start[s] && b.page_start[s + 1] >= b.page_start[s],
          ErrorCode::kInvalidArgument, "paged_attention: query_start and page_start must be non-decreasing");
  }
  if (static_cast<std::size_t>(b.query_start[n_seq]) != b.q_pos.size()) {
    throw Error(ErrorCode::kInvalidArgument, "paged_attention: q_pos has " + std::to_string(b.q_pos.size()) +
                                                 " entries, query_start says " +
                                                 std::to_string(b.query_start[n_seq]));
  }
  if (static_cast<std::size_t>(b.page_start[n_seq]) != b.pages.size()) {
    throw Error(ErrorCode::kInvalidArgument, "paged_attention: pages has " + std::to_string(b.pages.size()) +
                                                 " entries, page_start says " +
                                                 std::to_string(b.page_start[n_seq]));
  }
  for (const std::int32_t p : b.pages) {
    check(p >= 0, ErrorCode::kInvalidArgument, "paged_attention: negative page index");
  }
  for (std::size_t s = 0; s < n_seq; ++s) {
    const std::int64_t capacity =
        static_cast<std::int64_t>(b.page_start[s + 1] - b.page_start[s]) * cache.block_size;
    if (!(b.kv_len[s] >= 0 && b.kv_len[s] <= capacity)) {
      throw Error(ErrorCode::kInvalidArgument, "paged_attention: sequence " + std::to_string(s) +
                                                   " has kv_len " + std::to_string(b.kv_len[s]) +
                                                   " but its pages hold " + std::to_string(capacity) +
                                                   " tokens");
    }
    for (std::int32_t r = b.query_start[s]; r < b.query_start[s + 1]; ++r) {
      const std::int32_t pos = b.q_pos[static_cast<std::size_t>(r)];
      if (!(pos >= 0 && pos < b.kv_len[s])) {
        throw Error(ErrorCode::kInvalidArgument, "paged_attention: query row " + std::to_string(r) +
                                                     " at position " + std::to_string(pos) +
                                                     " is outside its sequence's cache of " +
                                                     std::to_string(b.kv_len[s]) + " tokens");
      }
    }
  }
}

// SIMD through GCC/Clang vector extensions, as wide as the target allows (the library is built
// with -march=native by default; baseline x86-64 gets SSE2, AArch64 NEON).
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;
#endif
using VF = float __attribute__((vector_size(kLanes * sizeof(float))));
using VI = std::int32_t __attribute__((vector_size(kLanes * sizeof(std::int32_t))));
static_assert(kKeyChunk % kLanes == 0);

inline VF load(const float* p) {
  VF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, VF v) {
  std::memcpy(p, &v, sizeof v);
}
// x - 0 is exactly x (also for -0 and NaN); written this way the compiler emits one broadcast,
// where a lane-by-lane loop becomes a chain of inserts.
inline VF splat(float x) {
  return x - VF{};
}
inline VF select(VI mask, VF a, VF b) {
  return reinterpret_cast<VF>((reinterpret_cast<VI>(a) & mask) | (reinterpret_cast<VI>(b) & ~mask));
}
inline VF vmax(VF a, VF b) {
  return select(a > b, a, b);
}

// exp for the softmax, per lane: Cephes' expf polynomial (within 2 ulp of std::exp here), because
// std::exp does not vectorise without -ffast-math. Inputs below -87 (weights under 1.7e-38) clamp
// there, callers mask out what must be exactly zero; NaN stays NaN.
inline VF vexp(VF x) {
  VF c = select(x > splat(-87.0f), x, splat(-87.0f));  // -inf (and NaN, restored below) go to -87
  c = select(c < splat(88.0f), c, splat(88.0f));
  // round(c * log2(e)) by truncating a positive number.
  const VI n = __builtin_convertvector(c * 1.44269504088896341f + 126.5f, VI) - 126;
  const VF nf = __builtin_convertvector(n, VF);
  VF r = c - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  VF y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  return select(x == x, y * reinterpret_cast<VF>((n + 127) << 23), x);
}

// Batch invariance: every score is acc = acc + q[x] * k[x] over x in order, every output element
// o = o + p[j] * v[j] over keys in order, and the softmax of a query vector reads only its own
// row. Blocking below only decides which of these independent sequences share registers, so a
// query vector's result is bitwise the same whatever batch, tile, block or thread it runs in.

// Query vectors per register block: enough accumulators to hide FMA latency without spilling.
constexpr int kQueryBlock = kLanes == 16 ? 4 : 2;

// s[i][j] = q[i] . k[j] for QB vectors (rows of q, stride d) and keys [0, n_vecs * kLanes) of the
// transposed chunk kt[x][j] (row stride kKeyChunk).
template <int QB>
void block_scores(const float* q, int d, const float* kt, int n_vecs, float* s) {
  for (int j0 = 0; j0 < n_vecs; j0 += 4) {
    const int nv = std::min(4, n_vecs - j0);
    VF acc[QB][4] = {};
    for (int x = 0; x < d; ++x) {
      const float* kx = kt + x * kKeyChunk + j0 * kLanes;
      VF k[4];
      for (int v = 0; v < 4; ++v) k[v] = v < nv ? load(kx + v * kLanes) : VF{};
      for (int i = 0; i < QB; ++i) {
        const VF qi = splat(q[i * d + x]);
        for (int v = 0; v < 4; ++v) acc[i][v] += qi * k[v];
      }
    }
    for (int i = 0; i < QB; ++i) {
      for (int v = 0; v < nv; ++v) store(s + i * kKeyChunk + (j0 + v) * kLanes, acc[i][v]);
    }
  }
}

// o[i][x] += sum_j p[i][j] * v[j][x] for QB vectors (o rows of stride dp), keys [0, n_keys) in
// order; v rows are dp wide (head_dim rounded up to kLanes, zero padded).
template <int QB>
void block_pv(const float* p, const float* v, int n_keys, int dp, float* o) {
  for (int x0 = 0; x0 < dp; x0 += 4 * kLanes) {
    const int nv = std::min(4, (dp - x0) / kLanes);
    VF acc[QB][4];
    for (int i = 0; i < QB; ++i) {
      for (int u = 0; u < 4; ++u) acc[i][u] = u < nv ? load(o + i * dp + x0 + u * kLanes) : VF{};
    }
    for (int j = 0; j < n_keys; ++j) {
      const float* vj = v + static_cast<std::ptrdiff_t>(j) * dp + x0;
      VF vv[4];
      for (int u = 0; u < 4; ++u) vv[u] = u < nv ? load(vj + u * kLanes) : VF{};
      for (int i = 0; i < QB; ++i) {
        const VF pij = splat(p[i * kKeyChunk + j]);
        for (int u = 0; u < 4; ++u) acc[i][u] += pij * vv[u];
      }
    }
    for (int i = 0; i < QB; ++i) {
      for (int u = 0; u < nv; ++u) store(o + i * dp + x0 + u * kLanes, acc[i][u]);
    }
  }
}

// Online softmax step for one query vector over the first n_vecs * kLanes scores of a chunk, of
// which the first `visible` (> 0) are causal-visible: scores become weights relative to the new
// running max (masked ones exactly 0; a NaN score stays NaN and poisons the row, as it should), and
// the running sum and output row are rescaled.
void softmax_step(float* s, int n_vecs, int visible, float& m, float& l, float* o, int dp) {
  const VF neg_inf = splat(-std::numeric_limits<float>::infinity());
  VI lane;
  for (int i = 0; i < kLanes; ++i) lane[i] = i;
  VF vmax_acc = neg_inf;
  for (int v = 0; v < n_vecs; ++v) {
    vmax_acc = vmax(vmax_acc, select(lane + v * kLanes < visible, load(s + v * kLanes), neg_inf));
  }
  float chunk_max = vmax_acc[0];
  for (int i = 1; i < kLanes; ++i) chunk_max = std::max(chunk_max, vmax_acc[i]);
  const float m_new = std::max(m, chunk_max);
  // exp of the same polynomial as the weights; on the first chunk m = -inf and this is ~0
  // against empty accumulators.
  const float correction = vexp(splat(m - m_new))[0];
  VF sum = VF{};
  for (int v = 0; v < n_vecs; ++v) {
    const VF pv = select(lane + v * kLanes < visible, vexp(load(s + v * kLanes) - m_new), VF{});
    store(s + v * kLanes, pv);
    sum += pv;
  }
  // Fixed-order horizontal sum.
  float total = 0.0f;
  for (int i = 0; i < kLanes; ++i) total += sum[i];
  l = l * correction + total;
  m = m_new;
  if (correction != 1.0f) {
    const VF c = splat(correction);
    for (int x = 0; x < dp; x += kLanes) store(o + x, load(o + x) * c);
  }
}

// Scores for a narrow tile (at most kLanes query vectors, e.g. a decode row's GQA group), with
// the query vectors along the lanes instead: s[j][lane] = q[lane] . k[j] for keys [0, n_keys)
// (a multiple of 4) of the gathered rows kb[j][x]. Each K element is broadcast once, where the
// wide kernel would transpose the chunk for only a few queries. Same per-score arithmetic.
void narrow_scores(const float* qt, int d, const float* const* keys, int n_keys, float* s) {
  for (int j0 = 0; j0 < n_keys; j0 += 4) {
    const float* k0 = keys[j0];
    const float* k1 = keys[j0 + 1];
    const float* k2 = keys[j0 + 2];
    const float* k3 = keys[j0 + 3];
    VF acc[4] = {};
    for (int x = 0; x < d; ++x) {
      const VF qv = load(qt + x * kLanes);
      acc[0] += qv * splat(k0[x]);
      acc[1] += qv * splat(k1[x]);
      acc[2] += qv * splat(k2[x]);
      acc[3] += qv * splat(k3[x]);
    }
    for (int jj = 0; jj < 4; ++jj) store(s + (j0 + jj) * kLanes, acc[jj]);
  }
}

// o[x][lane] += sum_j p[j][lane] * v[j][x] for keys [0, n_keys) in order.
void narrow_pv(const float* p, const float* const* values, int n_keys, int d, float* o) {
  constexpr int kXBlock = 8;
  int x0 = 0;
  for (; x0 + kXBlock <= d; x0 += kXBlock) {
    VF acc[kXBlock];
    for (int xx = 0; xx < kXBlock; ++xx) acc[xx] = load(o + (x0 + xx) * kLanes);
    for (int j = 0; j < n_keys; ++j) {
      const VF pj = load(p + j * kLanes);
      const float* vj = values[j] + x0;
      for (int xx = 0; xx < kXBlock; ++xx) acc[xx] += pj * splat(vj[xx]);
    }
    for (int xx = 0; xx < kXBlock; ++xx) store(o + (x0 + xx) * kLanes, acc[xx]);
  }
  for (; x0 < d; ++x0) {
    VF acc = load(o + x0 * kLanes);
    for (int j = 0; j < n_keys; ++j) acc += load(p + j * kLanes) * splat(values[j][x0]);
    store(o + x0 * kLanes, acc);
  }
}

// Online softmax step of a narrow tile, all its vectors at once: the same operations per vector
// as softmax_step, including the order of the sum (lane classes j % kLanes, then across them). A
// vector that sees no key of this chunk (c0 > its position) is left exactly as it was.
void narrow_softmax_step(float* s, int n_keys, int c0, VI pos, VF& m, VF& l, float* o, int d) {
  const VF neg_inf = splat(-std::numeric_limits<float>::infinity());
  VF chunk_max = neg_inf;
  for (int j = 0; j < n_keys; ++j) {
    chunk_max = vmax(chunk_max, select((c0 + j) + VI{} <= pos, load(s + j * kLanes), neg_inf));
  }
  const VF m_new = vmax(m, chunk_max);
  const VI here = c0 + VI{} <= pos;
  const VF correction = select(here, vexp(m - m_new), splat(1.0f));
  for (int j = 0; j < n_keys; ++j) {
    const VF pj = select((c0 + j) + VI{} <= pos, vexp(load(s + j * kLanes) - m_new), VF{});
    store(s + j * kLanes, pj);
  }
  VF total = VF{};
  for (int lane = 0; lane < kLanes; ++lane) {
    VF part = VF{};
    for (int j = lane; j < n_keys; j += kLanes) part += load(s + j * kLanes);
    total += part;
  }
  l = select(here, l * correction + total, l);
  m = select(here, m_new, m);
  for (int x = 0; x < d; ++x) store(o + x * kLanes, load(o + x * kLanes) * correction);
}

// Per-thread scratch, sized once per call.
struct Scratch {
  std::vector<float> q, o, s, kt, v, m, l, zero;
  std::vector<std::int32_t> pos;
  std::vector<const float*> keys, values;
  Scratch(int max_vectors, int head_dim, int padded_dim) {
    const auto n = static_cast<std::size_t>(std::max(max_vectors, kLanes));
    q.resize(n * static_cast<std::size_t>(head_dim));
    o.resize(n * static_cast<std::size_t>(padded_dim));
    s.resize(n * kKeyChunk);
    kt.resize(static_cast<std::size_t>(head_dim) * kKeyChunk);
    zero.assign(static_cast<std::size_t>(head_dim), 0.0f);
    keys.resize(kKeyChunk);
    values.resize(kKeyChunk);
    v.assign(static_cast<std::size_t>(padded_dim) * kKeyChunk, 0.0f);
    m.resize(n);
    l.resize(n);
    pos.resize(n);
  }
};

// What both paths of one work item share: geometry, and the tile's query vectors (scaled) with
// their positions. Vector i is query row row_begin + i / group, head kv_head * group + i % group.
struct Tile {
  int d, dp, group, n_vec;
  std::int64_t row_stride, kv_dim;
  const std::int32_t* pages;

  Tile(const float* q, const PagedKv& cache, const AttentionBatch& b, int n_heads, float scale,
       const WorkItem& item, Scratch& w)
      : d(cache.head_dim),
        dp((cache.head_dim + kLanes - 1) / kLanes * kLanes),
        group(n_heads / cache.n_kv_heads),
        n_vec((item.row_end - item.row_begin) * group),
        row_stride(static_cast<std::int64_t>(n_heads) * cache.head_dim),
        kv_dim(static_cast<std::int64_t>(cache.n_kv_heads) * cache.head_dim),
        pages(b.pages.data() + b.page_start[static_cast<std::size_t>(item.seq)]) {
    // The group's heads are adjacent in q: each row contributes one run of group * d floats.
    for (int r = 0; r < item.row_end - item.row_begin; ++r) {
      const float* src =
          q + (item.row_begin + r) * row_stride + static_cast<std::int64_t>(item.kv_head) * group * d;
      float* dst = w.q.data() + static_cast<std::ptrdiff_t>(r) * group * d;
      for (int i = 0; i < group * d; ++i) dst[i] = src[i] * scale;
      for (int k = 0; k < group; ++k) {
        w.pos[static_cast<std::size_t>(r * group + k)] =
            b.q_pos[static_cast<std::size_t>(item.row_begin + r)];
      }
    }
  }
  [[nodiscard]] const float* row(const PagedKv& cache, int kv_head, int t, const float* base) const {
    return base + pages[t / cache.block_size] * cache.block_stride() + (t % cache.block_size) * kv_dim +
           static_cast<std::int64_t>(kv_head) * d;
  }
  [[nodiscard]] float* out_row(float* out, const WorkItem& item, int i) const {
    const int r = item.row_begin + i / group;
    const int h = item.kv_head * group + i % group;
    return out + r * row_stride + static_cast<std::int64_t>(h) * d;
  }
};

// Many query vectors (prefill): per chunk of kKeyChunk keys, K gathered transposed (keys along
// the lanes) and V as rows; scores, online softmax per vector, then o += p * v.
void attend_wide(const PagedKv& cache, const WorkItem& item, const Tile& t, Scratch& w, float* out) {
  const int d = t.d, dp = t.dp, n_vec = t.n_vec;
  std::fill(w.m.begin(), w.m.begin() + n_vec, -std::numeric_limits<float>::infinity());
  std::fill(w.l.begin(), w.l.begin() + n_vec, 0.0f);
  std::fill(w.o.begin(), w.o.begin() + static_cast<std::ptrdiff_t>(n_vec) * dp, 0.0f);

  for (int c0 = 0; c0 < item.kv_end; c0 += kKeyChunk) {
    const int nk = std::min(item.kv_end - c0, kKeyChunk);
    const int n_vecs = (nk + kLanes - 1) / kLanes;
    // Keys past nk up to the vector boundary are zero.
    for (int j = 0; j < n_vecs * kLanes; ++j) {
      float* vdst = w.v.data() + static_cast<std::ptrdiff_t>(j) * dp;
      if (j < nk) {
        const float* ksrc = t.row(cache, item.kv_head, c0 + j, cache.k);
        for (int x = 0; x < d; ++x) w.kt[static_cast<std::size_t>(x * kKeyChunk + j)] = ksrc[x];
        std::memcpy(vdst, t.row(cache, item.kv_head, c0 + j, cache.v),
                    static_cast<std::size_t>(d) * sizeof(float));
      } else {
        for (int x = 0; x < d; ++x) w.kt[static_cast<std::size_t>(x * kKeyChunk + j)] = 0.0f;
        std::fill(vdst, vdst + d, 0.0f);
      }
    }

    for (int i0 = 0; i0 < n_vec; i0 += kQueryBlock) {
      const int qb = std::min(kQueryBlock, n_vec - i0);
      // Keys this block can see (causal).
      int visible = 0;
      for (int i = i0; i < i0 + qb; ++i) {
        visible = std::max(visible, std::min(nk, w.pos[static_cast<std::size_t>(i)] - c0 + 1));
      }
      if (visible <= 0) continue;
      const int vis_vecs = (visible + kLanes - 1) / kLanes;
      const float* qi = w.q.data() + static_cast<std::ptrdiff_t>(i0) * d;
      float* si = w.s.data() + static_cast<std::ptrdiff_t>(i0) * kKeyChunk;
      float* oi = w.o.data() + static_cast<std::ptrdiff_t>(i0) * dp;
      if (qb == kQueryBlock) {
        block_scores<kQueryBlock>(qi, d, w.kt.data(), vis_vecs, si);
      } else {
        for (int i = 0; i < qb; ++i)
          block_scores<1>(qi + i * d, d, w.kt.data(), vis_vecs, si + i * kKeyChunk);
      }
      for (int i = i0; i < i0 + qb; ++i) {
        float* srow = w.s.data() + static_cast<std::ptrdiff_t>(i) * kKeyChunk;
        const int seen = std::min(nk, w.pos[static_cast<std::size_t>(i)] - c0 + 1);
        if (seen <= 0) {
          // Sees nothing here: zero weights leave its accumulators exactly as they were.
          std::fill(srow, srow + vis_vecs * kLanes, 0.0f);
          continue;
        }
        softmax_step(srow, vis_vecs, seen, w.m[static_cast<std::size_t>(i)], w.l[static_cast<std::size_t>(i)],
                     w.o.data() + static_cast<std::ptrdiff_t>(i) * dp, dp);
      }
      if (qb == kQueryBlock) {
        block_pv<kQueryBlock>(si, w.v.data(), visible, dp, oi);
      } else {
        for (int i = 0; i < qb; ++i) block_pv<1>(si + i * kKeyChunk, w.v.data(), visible, dp, oi + i * dp);
      }
    }
  }

  for (int i = 0; i < n_vec; ++i) {
    float* dst = t.out_row(out, item, i);
    const float* src = w.o.data() + static_cast<std::ptrdiff_t>(i) * dp;
    const float inv = 1.0f / w.l[static_cast<std::size_t>(i)];
    for (int x = 0; x < d; ++x) dst[x] = src[x] * inv;
  }
}

// At most kLanes query vectors (decode): one vector per lane, K and V rows read in place.
void attend_narrow(const PagedKv& cache, const WorkItem& item, const Tile& t, Scratch& w, float* out) {
  const int d = t.d, n_vec = t.n_vec;
  // Transposed queries qt[x][lane]; unused lanes are zero at position -1 (they see no key).
  float* qt = w.kt.data();  // the wide path's buffer, free here
  std::fill(qt, qt + static_cast<std::ptrdiff_t>(d) * kLanes, 0.0f);
  VI pos = VI{} - 1;
  for (int i = 0; i < n_vec; ++i) {
    for (int x = 0; x < d; ++x) qt[x * kLanes + i] = w.q[static_cast<std::size_t>(i * d + x)];
    pos[i] = w.pos[static_cast<std::size_t>(i)];
  }
  VF m = splat(-std::numeric_limits<float>::infinity());
  VF l = VF{};
  float* o = w.o.data();  // o[x][lane]
  std::fill(o, o + static_cast<std::ptrdiff_t>(d) * kLanes, 0.0f);
  int max_pos = -1;
  for (int i = 0; i < n_vec; ++i) max_pos = std::max(max_pos, pos[i]);

  for (int c0 = 0; c0 < item.kv_end; c0 += kKeyChunk) {
    const int visible = std::min(item.kv_end - c0, std::min(kKeyChunk, max_pos - c0 + 1));
    if (visible <= 0) break;
    const int n_keys = (visible + 3) / 4 * 4;
    // K and V rows are read in place; keys past `visible` up to the multiple of 4 read a zero row.
    for (int j = 0; j < n_keys; ++j) {
      const bool real = j < visible;
      w.keys[static_cast<std::size_t>(j)] =
          real ? t.row(cache, item.kv_head, c0 + j, cache.k) : w.zero.data();
      w.values[static_cast<std::size_t>(j)] =
          real ? t.row(cache, item.kv_head, c0 + j, cache.v) : w.zero.data();
    }
    // Decode is bound by these scattered loads: start fetching the next chunk's rows so they
    // arrive while this one computes.
    const int next_end = std::min(item.kv_end, std::min(c0 + 2 * kKeyChunk, max_pos + 1));
    for (int tk = c0 + kKeyChunk; tk < next_end; ++tk) {
      const float* kr = t.row(cache, item.kv_head, tk, cache.k);
      const float* vr = t.row(cache, item.kv_head, tk, cache.v);
      for (int x = 0; x < d; x += 64 / static_cast<int>(sizeof(float))) {
        __builtin_prefetch(kr + x);
        __builtin_prefetch(vr + x);
      }
    }
    narrow_scores(qt, d, w.keys.data(), n_keys, w.s.data());
    narrow_softmax_step(w.s.data(), n_keys, c0, pos, m, l, o, d);
    narrow_pv(w.s.data(), w.values.data(), n_keys, d, o);
  }

  for (int i = 0; i < n_vec; ++i) {
    float* dst = t.out_row(out, item, i);
    const float inv = 1.0f / l[i];
    for (int x = 0; x < d; ++x) dst[x] = o[x * kLanes + i] * inv;
  }
}

void attend(const float* q, const PagedKv& cache, const AttentionBatch& b, int n_heads, float scale,
            const WorkItem& item, Scratch& w, float* out) {
  const Tile t(q, cache, b, n_heads, scale, item, w);
  if (t.n_vec <= kLanes) {
    attend_narrow(cache, item, t, w, out);
  } else {
    attend_wide(cache, item, t, w, out);
  }
}

}  // namespace
}  // namespace detail

void write_kv(const PagedKv& cache, const float* k_new, const float* v_new, const std::int64_t* slots,
              std::int64_t n) {
  check(cache.k != nullptr && cache.v != nullptr, ErrorCode::kInvalidArgument,
        "write_kv: cache has no K or V storage");
  check(cache.block_size > 0 && cache.n_kv_heads > 0 && cache.head_dim > 0 && n >= 0,
        ErrorCode::kInvalidArgument, "write_kv: need block_size, n_kv_heads, head_dim > 0 and n >= 0");
  for (std::int64_t i = 0; i < n; ++i) {
    if (slots[i] < 0) {
      throw Error(ErrorCode::kInvalidArgument, "write_kv: slot " + std::to_string(slots[i]) + " of row " +
                                                   std::to_string(i) + " is negative");
    }
  }
  const std::int64_t kv_dim = static_cast<std::int64_t>(cache.n_kv_heads) * cache.head_dim;
  const std::size_t bytes = static_cast<std::size_t>(kv_dim) * sizeof(float);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t block = slots[i] / cache.block_size;
    const std::int64_t offset = (slots[i] % cache.block_size) * kv_dim;
    std::memcpy(cache.k + block * cache.block_stride() + offset, k_new + i * kv_dim, bytes);
    std::memcpy(cache.v + block * cache.block_stride() + offset, v_new + i * kv_dim, bytes);
  }
}

void paged_attention(const float* q, const PagedKv& cache, const AttentionBatch& batch, int n_heads,
                     float scale, float* out) {
  detail::validate_batch(cache, batch, n_heads);
  const int group = n_heads / cache.n_kv_heads;
  const int tile_rows = std::max(1, detail::kTileVectors / group);
  const std::size_t n_seq = batch.query_start.size() - 1;

  std::vector<detail::WorkItem> items;
  std::int64_t total_cost = 0;
  for (std::size_t s = 0; s < n_seq; ++s) {
    for (std::int32_t r0 = batch.query_start[s]; r0 < batch.query_start[s + 1]; r0 += tile_rows) {
      const std::int32_t r1 = std::min(batch.query_start[s + 1], r0 + tile_rows);
      std::int32_t kv_end = 0;
      for (std::int32_t r = r0; r < r1; ++r)
        kv_end = std::max(kv_end, batch.q_pos[static_cast<std::size_t>(r)] + 1);
      // Work ~ (query vectors + a gather) x keys x head_dim, times 2 for QK^T and PV.
      const std::int64_t cost =
          static_cast<std::int64_t>((r1 - r0) * group + 2) * kv_end * cache.head_dim * 2;
      for (int g = 0; g < cache.n_kv_heads; ++g) {
        items.push_back({static_cast<std::int32_t>(s), g, r0, r1, kv_end, cost});
        total_cost += cost;
      }
    }
  }
  // Longest first, so dynamic scheduling does not end with one thread on the largest tile.
  std::stable_sort(items.begin(), items.end(),
                   [](const detail::WorkItem& a, const detail::WorkItem& b) { return a.cost > b.cost; });

  const int max_vectors = tile_rows * group;
  const int padded_dim = (cache.head_dim + detail::kLanes - 1) / detail::kLanes * detail::kLanes;
  const int threads = std::min<int>(detail::threads_for(total_cost), static_cast<int>(items.size()));
#pragma omp parallel num_threads(std::max(threads, 1)) if (threads > 1)
  {
    detail::Scratch scratch(max_vectors, cache.head_dim, padded_dim);
#pragma omp for schedule(dynamic, 1)
    for (std::size_t i = 0; i < items.size(); ++i) {
      detail::attend(q, cache, batch, n_heads, scale, items[i], scratch, out);
    }
  }
}

}  // namespace chunkwise::cpu
