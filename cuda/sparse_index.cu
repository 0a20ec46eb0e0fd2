// Device mask building for the stock sparse policies (SparseIndexBuilder, cuda/sparse_index.cpp):
// the kernels behind cuda/sparse_index_kernels.hpp.
//
//  * The last-query estimate (vertical-slash, FlexPrefill): S = Q K^T of the chunk's last rows
//    against every key on tensor cores (mma.sync m16n8k16 on the 16-bit storage type, fp32
//    accumulators: the products of the stored values are exact, so this is an fp32 estimate of
//    the same inputs the host gets), in two passes over the keys: per-CTA row max / sum of exp,
//    combined per row, then the normalised probabilities, reduced in shared memory into column
//    sums and diagonal sums in a fixed order (deterministic, no float atomics on them).
//  * Top-k and cover selections: a radix select on the order-preserving 32-bit key of the float
//    values (four 8-bit passes with histograms in shared memory), then an ordered pass that keeps
//    the keys above the threshold and the lowest-index ties (the host's top_k() rule).
//  * Pooled scores (block top-k, FlexPrefill's query-aware heads): fp32 dot products of tile means
//    with a CTA's rows of scores kept in shared memory, top-k per row in one warp.
//  * Bitmaps per mask row, counted, scanned (CUB) and emitted as CSR in order.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>

#include "attention_internal.cuh"
#include "sparse_index_kernels.hpp"
#include "storage.cuh"

namespace chunkwise::cuda::sparse_index {
namespace {

using attn::cp_async16;
using attn::cp_async_commit;
using attn::cp_async_wait;
using attn::kNegInf;
using attn::ldmatrix_x4;
using attn::mma_16816;
using attn::swz;

constexpr unsigned kFull = 0xffffffffu;
// order_key(+inf): forced entries.
constexpr std::uint32_t kInfKey = 0xff800000u;
// Histogram copies per CTA in the block-level selections (warp w uses copy w % kCopies).
constexpr int kCopies = 8;
constexpr int kSelectThreads = 512;

int blocks_for(std::int64_t n, int threads) {
  return static_cast<int>((n + threads - 1) / threads);
}

// The fixed-point scale of block_cover for values whose total is at most `bound`: a power of two
// that keeps 2 * bound * scale below 2^62 (headroom for rounding).
double fixed_scale_for(double bound) {
  int e = 0;
  while (std::ldexp(1.0, e) < bound) ++e;
  return std::ldexp(1.0, 61 - e);
}

// ---- small device helpers ---------------------------------------------------------------------

// A 32-bit key whose unsigned order is the float order (-0 just below +0; NaN above +inf).
__device__ __forceinline__ std::uint32_t order_key(float f) {
  const std::uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) != 0u ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float key_value(std::uint32_t k) {
  return __uint_as_float((k & 0x80000000u) != 0u ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ int warp_sum(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Bits of word w (tiles 32w .. 32w + 31) for the tiles in [lo, hi].
__device__ __forceinline__ std::uint32_t range_bits(int w, int lo, int hi) {
  const int a = max(lo, 32 * w) - 32 * w, b = min(hi, 32 * w + 31) - 32 * w;
  if (b < a) return 0u;
  const int len = b - a + 1;
  return (len == 32 ? kFull : ((1u << len) - 1u)) << a;
}

// 32 bits of a bit array starting at bit e (bits below 0 read as 0). bits must have a word past
// the last one read.
__device__ __forceinline__ std::uint32_t get32(const std::uint32_t* bits, int e) {
  if (e <= -32) return 0u;
  if (e < 0) return bits[0] << (-e);
  const int w = e >> 5, s = e & 31;
  const std::uint32_t lo = bits[w];
  return s == 0 ? lo : (lo >> s) | (bits[w + 1] << (32 - s));
}

template <class T>
__device__ __forceinline__ std::int64_t key_offset(const Keys<T>& k, int p, int kvh_off) {
  const int blk = p / k.block_size, slot = p - blk * k.block_size;
  return static_cast<std::int64_t>(__ldg(k.pages + blk)) * k.block_stride +
         static_cast<std::int64_t>(slot) * k.row_stride + kvh_off;
}

// ---- radix selection ---------------------------------------------------------------------------

// In one warp, over 256 bucket counts: the bucket b (scanning from 255 down) where the count of
// buckets above b is below `need` and the count through b reaches it; *above = the count above b.
// need >= 1 and the counts must reach it (else the lowest non-empty bucket is returned).
__device__ int warp_find_bucket(const unsigned* hist, unsigned need, unsigned* above) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  unsigned c[8];
  unsigned local = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) local += (c[i] = hist[255 - (lane * 8 + i)]);
  unsigned incl = local;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned v = __shfl_up_sync(kFull, incl, o);
    if (lane >= o) incl += v;
  }
  const unsigned excl = incl - local;
  const unsigned hit = __ballot_sync(kFull, incl >= need);
  const unsigned nonempty = __ballot_sync(kFull, local > 0);
  const int src = hit != 0u ? __ffs(hit) - 1 : (nonempty != 0u ? 31 - __clz(nonempty) : 31);
  int bucket = 0;
  unsigned acc = excl;
  if (lane == src) {
    int chosen = -1, last = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (c[i] > 0) last = i;
    for (int i = 0; i < 8 && hit != 0u; ++i) {
      if (c[i] > 0 && acc + c[i] >= need) {
        chosen = i;
        break;
      }
      acc += c[i];
    }
    if (chosen < 0) {
      chosen = last;
      acc = excl;
      for (int i = 0; i < chosen; ++i) acc += c[i];
    }
    bucket = 255 - (lane * 8 + chosen);
  }
  *above = __shfl_sync(kFull, acc, src);
  return __shfl_sync(kFull, bucket, src);
}

// The same over (count, sum) buckets with a target sum: the bucket where the sum of the buckets
// above it is below `need` and the sum through it reaches it.
__device__ int warp_find_cover_bucket(const unsigned* cnt, const double* sum, double need,
                                      unsigned* above_cnt, double* above_sum) {
  const int lane = static_cast<int>(threadIdx.x & 31);
  unsigned c[8];
  double s[8];
  unsigned lc = 0;
  double ls = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    c[i] = cnt[255 - (lane * 8 + i)];
    s[i] = sum[255 - (lane * 8 + i)];
    lc += c[i];
    ls += s[i];
  }
  unsigned ic = lc;
  double is = ls;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned vc = __shfl_up_sync(kFull, ic, o);
    const double vs = __shfl_up_sync(kFull, is, o);
    if (lane >= o) {
      ic += vc;
      is += vs;
    }
  }
  const unsigned ec = ic - lc;
  const double es = is - ls;
  const unsigned hit = __ballot_sync(kFull, is >= need && lc > 0);
  const unsigned nonempty = __ballot_sync(kFull, lc > 0);
  const int src = hit != 0u ? __ffs(hit) - 1 : (nonempty != 0u ? 31 - __clz(nonempty) : 31);
  int bucket = 0;
  unsigned ac = ec;
  double as = es;
  if (lane == src) {
    int chosen = -1, last = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (c[i] > 0) last = i;
    for (int i = 0; i < 8 && hit != 0u; ++i) {
      if (c[i] > 0 && as + s[i] >= need) {
        chosen = i;
        break;
      }
      ac += c[i];
      as += s[i];
    }
    if (chosen < 0) {
      chosen = last;
      ac = ec;
      as = es;
      for (int i = 0; i < chosen; ++i) {
        ac += c[i];
        as += s[i];
      }
    }
    bucket = 255 - (lane * 8 + chosen);
  }
  *above_cnt = __shfl_sync(kFull, ac, src);
  *above_sum = __shfl_sync(kFull, as, src);
  return __shfl_sync(kFull, bucket, src);
}

// The top k of n keys in one CTA of NT threads: every key > thr, and the first `take` keys == thr
// in index order. k >= n: all (thr 0, take INT_MAX); k <= 0: none. hist: (kCopies + 1) * 256.
template <int NT, class KeyOf>
__device__ void block_topk_threshold(int n, int k, KeyOf key_of, unsigned* hist, std::uint32_t& thr,
                                     int& take) {
  if (k >= n) {
    thr = 0u;
    take = INT_MAX;
    return;
  }
  if (k <= 0) {
    thr = 0xffffffffu;
    take = 0;
    return;
  }
  __shared__ int s_bucket;
  __shared__ unsigned s_above;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  unsigned* const mine = hist + (warp % kCopies) * 256;
  unsigned* const total = hist + kCopies * 256;
  std::uint32_t prefix = 0u, mask = 0u;
  unsigned need = static_cast<unsigned>(k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = tid; i < kCopies * 256; i += NT) hist[i] = 0u;
    __syncthreads();
    for (int base = 0; base < n; base += NT) {
      const int i = base + tid;
      std::uint32_t key = 0u;
      bool cand = false;
      if (i < n) {
        key = key_of(i);
        cand = (key & mask) == prefix;
      }
      const unsigned b = cand ? (key >> shift) & 255u : 256u;
      const unsigned peers = __match_any_sync(kFull, b);
      if (cand && __ffs(peers) - 1 == lane) atomicAdd(mine + b, static_cast<unsigned>(__popc(peers)));
    }
    __syncthreads();
    for (int b = tid; b < 256; b += NT) {
      unsigned s = 0;
      for (int c = 0; c < kCopies; ++c) s += hist[c * 256 + b];
      total[b] = s;
    }
    __syncthreads();
    if (warp == 0) {
      unsigned above = 0;
      const int b = warp_find_bucket(total, need, &above);
      if (lane == 0) {
        s_bucket = b;
        s_above = above;
      }
    }
    __syncthreads();
    prefix |= static_cast<std::uint32_t>(s_bucket) << shift;
    mask |= 255u << shift;
    need -= s_above;
    __syncthreads();
  }
  thr = prefix;
  take = static_cast<int>(need);
}

// The cover selection of FlexPrefill (detail::cover_count and the query-aware union): over the
// non-negative values (keys >= order_key(+0)), the fewest of the largest whose sum reaches target
// (relative: share * their total), at least one. Returns count, and thr / take as
// block_topk_threshold does (the ties taken are the lowest indices). Bucket sums are exact
// fixed-point integers (units of 1 / fixed_scale, rounded per value), so they do not depend on the
// order of the atomics; fixed_scale_for(bound) keeps a total up to `bound` below 2^62.
template <int NT, class KeyOf>
__device__ void block_cover(int n, double target, bool relative, double fixed_scale, KeyOf key_of,
                            unsigned* cnt, unsigned long long* fsum, double* total_sum, std::uint32_t& thr,
                            int& take, int& count) {
  const double unit = fixed_scale;
  __shared__ int s_bucket;
  __shared__ unsigned s_above_cnt, s_bucket_cnt, s_all;
  __shared__ double s_above_sum, s_total;
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int copy = warp % kCopies;
  unsigned* const cnt_total = cnt + kCopies * 256;
  std::uint32_t prefix = 0u, mask = 0u;
  double need = 0;
  unsigned above = 0, bucket_cnt = 0;
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    for (int i = tid; i < kCopies * 256; i += NT) {
      cnt[i] = 0u;
      fsum[i] = 0ull;
    }
    __syncthreads();
    for (int base = 0; base < n; base += NT) {
      const int i = base + tid;
      std::uint32_t key = 0u;
      bool cand = false;
      if (i < n) {
        key = key_of(i);
        cand = key >= 0x80000000u && (key & mask) == prefix;
      }
      const unsigned b = cand ? (key >> shift) & 255u : 256u;
      const unsigned peers = __match_any_sync(kFull, b);
      const unsigned long long fx =
          cand ? static_cast<unsigned long long>(static_cast<double>(key_value(key)) * unit + 0.5) : 0ull;
      // The group's sum in three 21-bit parts (32 of them cannot overflow 32 bits).
      const unsigned s0 = __reduce_add_sync(peers, static_cast<unsigned>(fx & 0x1fffffull));
      const unsigned s1 = __reduce_add_sync(peers, static_cast<unsigned>((fx >> 21) & 0x1fffffull));
      const unsigned s2 = __reduce_add_sync(peers, static_cast<unsigned>(fx >> 42));
      if (cand && __ffs(peers) - 1 == lane) {
        atomicAdd(cnt + copy * 256 + b, static_cast<unsigned>(__popc(peers)));
        atomicAdd(fsum + copy * 256 + b, static_cast<unsigned long long>(s0) +
                                             (static_cast<unsigned long long>(s1) << 21) +
                                             (static_cast<unsigned long long>(s2) << 42));
      }
    }
    __syncthreads();
    for (int b = tid; b < 256; b += NT) {
      unsigned c = 0;
      unsigned long long s = 0;
      for (int k = 0; k < kCopies; ++k) {
        c += cnt[k * 256 + b];
        s += fsum[k * 256 + b];
      }
      cnt_total[b] = c;
      total_sum[b] = static_cast<double>(s) / unit;
    }
    __syncthreads();
    if (pass == 0) {
      if (warp == 0) {
        unsigned c = 0;
        double s = 0;
        for (int b = lane; b < 256; b += 32) {
          c += cnt_total[b];
          s += total_sum[b];
        }
        c = static_cast<unsigned>(warp_sum(static_cast<int>(c)));
        s = warp_sum(s);
        if (lane == 0) {
          s_all = c;
          s_total = s;
        }
      }
      __syncthreads();
      const unsigned all = s_all;
      const double total = s_total;
      need = relative ? target * total : target;
      if (all == 0u) {  // nothing to select
        thr = 0xffffffffu;
        take = 0;
        count = 0;
        return;
      }
      if (total < need) {  // never reached: every candidate
        thr = 0x80000000u;
        take = INT_MAX;
        count = static_cast<int>(all);
        return;
      }
      need = fmax(need, 0.0);  // <= 0: the largest value alone (at least one)
    }
    if (warp == 0) {
      unsigned ac = 0;
      double as = 0;
      const int b = warp_find_cover_bucket(cnt_total, total_sum, need, &ac, &as);
      if (lane == 0) {
        s_bucket = b;
        s_above_cnt = ac;
        s_above_sum = as;
        s_bucket_cnt = cnt_total[b];
      }
    }
    __syncthreads();
    prefix |= static_cast<std::uint32_t>(s_bucket) << shift;
    mask |= 255u << shift;
    need -= s_above_sum;
    above += s_above_cnt;
    bucket_cnt = s_bucket_cnt;
    __syncthreads();
  }
  thr = prefix;
  const double v = static_cast<double>(key_value(prefix));
  long long t = v > 0.0 ? static_cast<long long>(ceil(need / v)) : static_cast<long long>(bucket_cnt);
  t = max(1LL, min(t, static_cast<long long>(bucket_cnt)));
  take = static_cast<int>(t);
  count = static_cast<int>(above) + take;
}

// The ordered pass after a threshold: items [i0, i0 + ITEMS) per thread, tiles of NT * ITEMS in
// index order. emit(i0, selected bits, rank of the first selected item among all selected) for
// every thread and tile. Returns the number selected.
template <int NT, int ITEMS, class KeyOf, class Emit>
__device__ int block_select_emit(int n, KeyOf key_of, std::uint32_t thr, int take, Emit emit) {
  using Scan = cub::BlockScan<int, NT>;
  __shared__ typename Scan::TempStorage scan_storage;
  int eq_base = 0, sel_base = 0;
  for (int base = 0; base < n; base += NT * ITEMS) {
    const int i0 = base + static_cast<int>(threadIdx.x) * ITEMS;
    std::uint32_t keys[ITEMS];
    int eq = 0;
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      const int i = i0 + it;
      keys[it] = i < n ? key_of(i) : 0u;
      if (i < n && keys[it] == thr) ++eq;
    }
    int eq_excl = 0, eq_total = 0;
    Scan(scan_storage).ExclusiveSum(eq, eq_excl, eq_total);
    __syncthreads();
    std::uint32_t selected = 0u;
    int r = eq_base + eq_excl, nsel = 0;
#pragma unroll
    for (int it = 0; it < ITEMS; ++it) {
      if (i0 + it >= n) continue;
      bool s = keys[it] > thr;
      if (keys[it] == thr) {
        s = r < take;
        ++r;
      }
      if (s) {
        selected |= 1u << it;
        ++nsel;
      }
    }
    int sel_excl = 0, sel_total = 0;
    Scan(scan_storage).ExclusiveSum(nsel, sel_excl, sel_total);
    __syncthreads();
    emit(i0, selected, sel_base + sel_excl);
    eq_base += eq_total;
    sel_base += sel_total;
  }
  return sel_base;
}

// The top k of n keys in one warp (hist: this warp's 256 counters in shared memory).
template <class KeyOf>
__device__ void warp_topk_threshold(int n, int k, KeyOf key_of, unsigned* hist, std::uint32_t& thr,
                                    int& take) {
  if (k >= n) {
    thr = 0u;
    take = INT_MAX;
    return;
  }
  if (k <= 0) {
    thr = 0xffffffffu;
    take = 0;
    return;
  }
  const int lane = static_cast<int>(threadIdx.x & 31);
  std::uint32_t prefix = 0u, mask = 0u;
  unsigned need = static_cast<unsigned>(k);
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = lane; b < 256; b += 32) hist[b] = 0u;
    __syncwarp();
    for (int base = 0; base < n; base += 32) {
      const int i = base + lane;
      std::uint32_t key = 0u;
      bool cand = false;
      if (i < n) {
        key = key_of(i);
        cand = (key & mask) == prefix;
      }
      const unsigned b = cand ? (key >> shift) & 255u : 256u;
      const unsigned peers = __match_any_sync(kFull, b);
      if (cand && __ffs(peers) - 1 == lane) hist[b] += static_cast<unsigned>(__popc(peers));
      __syncwarp();
    }
    unsigned above = 0;
    const int b = warp_find_bucket(hist, need, &above);
    prefix |= static_cast<std::uint32_t>(b) << shift;
    mask |= 255u << shift;
    need -= above;
    __syncwarp();
  }
  thr = prefix;
  take = static_cast<int>(need);
}

// ---- the last-query estimate ------------------------------------------------------------------

template <class T>
struct EstimateArgs {
  const T* q;
  Keys<T> keys;
  int n_heads;
  int group;
  int query_len;
  int kv_len;
  int rows;
  float scale;
  const std::int32_t* skip;
  int skip_stride;
  int n_kb;
  EstimateBuffers b;
};

template <int D, int BM>
struct EstShape {
  static constexpr int kWarps = BM / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kRowsPerPass = kThreads / kChunks;
  static constexpr int kPitch = 72;  // floats per row of the probability tile
  static constexpr std::size_t kFixedBytes = static_cast<std::size_t>(BM * D + 2 * 64 * D) * 2 +
                                             static_cast<std::size_t>(BM * kPitch + kEstimateKeys) * 4;
  static_assert(64 % kRowsPerPass == 0 && BM % kRowsPerPass == 0, "tile shapes");
  static_assert(BM + 63 <= kThreads, "one thread per diagonal of a 64-key step");
};

// Pass 1 (kSums false): per CTA (head, 512 keys) and estimate row, the max and the sum of exp of
// the row's scaled scores over the CTA's visible keys. Pass 2 (kSums true): with the rows' totals,
// the probabilities, summed over rows per key (complete: every row of the head is in the CTA)
// and per diagonal over the CTA's keys (a window of rows + 511 diagonals, summed across CTAs by
// slash_reduce_kernel).
template <class T, int D, int BM, bool kSums>
__global__ void __launch_bounds__(EstShape<D, BM>::kThreads) estimate_kernel(const EstimateArgs<T> a) {
  using S = EstShape<D, BM>;
  constexpr int kKSteps = D / 16;
  const int h = static_cast<int>(blockIdx.x), kb = static_cast<int>(blockIdx.y);
  if (a.skip != nullptr && a.skip[h * a.skip_stride] != 0) return;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* const sQ = reinterpret_cast<T*>(smem_raw);
  T* const sK = sQ + BM * D;
  float* const sP = reinterpret_cast<float*>(sK + 2 * 64 * D);
  float* const sVert = sP + BM * S::kPitch;
  float* const sSlash = sVert + kEstimateKeys;

  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int n = a.kv_len, m = a.rows;
  const int key0 = kb * kEstimateKeys;
  const int key_end = min(n, key0 + kEstimateKeys);
  const int n_steps = (key_end - key0 + 63) / 64;
  const int kvh_off = (h / a.group) * D;
  const int first_pos = n - m;  // position of estimate row 0
  const int window = estimate_window(m);
  if constexpr (kSums) {
    for (int i = tid; i < kEstimateKeys; i += S::kThreads) sVert[i] = 0.0f;
    for (int i = tid; i < window; i += S::kThreads) sSlash[i] = 0.0f;
  }
  const int chunk = tid % S::kChunks, row0 = tid / S::kChunks;
  auto issue = [&](int j, int buf) {
    T* const dk = sK + buf * 64 * D;
#pragma unroll
    for (int i = 0; i < 64 / S::kRowsPerPass; ++i) {
      const int r = row0 + i * S::kRowsPerPass;
      const int p = key0 + j * 64 + r;
      const bool valid = p < key_end;
      const std::int64_t off = valid ? key_offset(a.keys, p, kvh_off) + chunk * 8 : 0;
      cp_async16(dk + swz<D>(r, chunk), a.keys.k + off, valid);
    }
  };
  const int a_row = warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
  const int a_chunk = lane >> 4;
  const int k_row = (lane >> 4) * 8 + (lane & 7);
  const int k_chunk = (lane >> 3) & 1;

  for (int rb = 0; rb * BM < m; ++rb) {
#pragma unroll
    for (int i = 0; i < BM / S::kRowsPerPass; ++i) {
      const int r = row0 + i * S::kRowsPerPass;
      const int e = rb * BM + r;
      const bool valid = e < m;
      const T* src = a.q +
                     (static_cast<std::int64_t>(a.query_len - m + (valid ? e : 0)) * a.n_heads + h) * D +
                     chunk * 8;
      cp_async16(sQ + swz<D>(r, chunk), src, valid);
    }
    issue(0, 0);
    cp_async_commit();

    const int e_lo = rb * BM + warp * 16 + g, e_hi = e_lo + 8;
    const bool ok_lo = e_lo < m, ok_hi = e_hi < m;
    const int pos_lo = first_pos + e_lo, pos_hi = first_pos + e_hi;
    float mx[2] = {kNegInf, kNegInf}, se[2] = {0.0f, 0.0f};
    float rm[2] = {0.0f, 0.0f}, rl[2] = {1.0f, 1.0f};
    if constexpr (kSums) {
      if (ok_lo) {
        const float2 st = a.b.stats[static_cast<std::int64_t>(h) * m + e_lo];
        rm[0] = st.x;
        rl[0] = st.y;
      }
      if (ok_hi) {
        const float2 st = a.b.stats[static_cast<std::int64_t>(h) * m + e_hi];
        rm[1] = st.x;
        rl[1] = st.y;
      }
    }
    std::uint32_t qf[kKSteps][4];
    const int rows_here = min(BM, m - rb * BM);

    for (int j = 0; j < n_steps; ++j) {
      cp_async_wait<0>();
      __syncthreads();  // step j (and the Q tile) landed; everyone is done with step j - 1
      if (j + 1 < n_steps) issue(j + 1, (j + 1) & 1);
      cp_async_commit();
      if (j == 0) {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) ldmatrix_x4(qf[kk], sQ + swz<D>(a_row, 2 * kk + a_chunk));
      }
      const T* const kt = sK + (j & 1) * 64 * D;
      float s[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
        for (int nn = 0; nn < 4; ++nn) {
          std::uint32_t bq[4];
          ldmatrix_x4(bq, kt + swz<D>(nn * 16 + k_row, 2 * kk + k_chunk));
          mma_16816<T>(s[2 * nn], qf[kk], bq[0], bq[1]);
          mma_16816<T>(s[2 * nn + 1], qf[kk], bq[2], bq[3]);
        }
      }
      const int step0 = key0 + j * 64;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = step0 + nt * 8 + t4 * 2 + e;
          const bool vis = key < key_end;
          s[nt][e] = ok_lo && vis && key <= pos_lo ? s[nt][e] * a.scale : kNegInf;
          s[nt][2 + e] = ok_hi && vis && key <= pos_hi ? s[nt][2 + e] * a.scale : kNegInf;
        }
      }
      if constexpr (!kSums) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          float tm = kNegInf;
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) tm = fmaxf(tm, fmaxf(s[nt][2 * r], s[nt][2 * r + 1]));
          const float nm = fmaxf(mx[r], tm);
          if (nm != kNegInf) {
            float acc = se[r] * expf(mx[r] - nm);
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) acc += expf(s[nt][2 * r] - nm) + expf(s[nt][2 * r + 1] - nm);
            se[r] = acc;
            mx[r] = nm;
          }
        }
      } else {
        float* const p_lo = sP + (warp * 16 + g) * S::kPitch;
        float* const p_hi = p_lo + 8 * S::kPitch;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          const float a0 = s[nt][0] == kNegInf ? 0.0f : expf(s[nt][0] - rm[0]) / rl[0];
          const float a1 = s[nt][1] == kNegInf ? 0.0f : expf(s[nt][1] - rm[0]) / rl[0];
          const float b0 = s[nt][2] == kNegInf ? 0.0f : expf(s[nt][2] - rm[1]) / rl[1];
          const float b1 = s[nt][3] == kNegInf ? 0.0f : expf(s[nt][3] - rm[1]) / rl[1];
          *reinterpret_cast<float2*>(p_lo + nt * 8 + t4 * 2) = make_float2(a0, a1);
          *reinterpret_cast<float2*>(p_hi + nt * 8 + t4 * 2) = make_float2(b0, b1);
        }
        __syncthreads();
        if (tid < 64) {
          float c = 0.0f;
          for (int r = 0; r < rows_here; ++r) c += sP[r * S::kPitch + tid];
          sVert[j * 64 + tid] += c;
        }
        if (tid < BM + 63) {
          const int d = tid - 63;  // row - key within the 64-key step
          const int r_lo = max(0, d), r_hi = min(rows_here - 1, 63 + d);
          if (r_hi >= r_lo) {
            float c = 0.0f;
            for (int r = r_lo; r <= r_hi; ++r) c += sP[r * S::kPitch + (r - d)];
            sSlash[rb * BM - j * 64 + d + kEstimateKeys - 1] += c;
          }
        }
        // The next step's top __syncthreads() orders these reads before sP is rewritten.
      }
    }
    if constexpr (!kSums) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int o = 1; o <= 2; o <<= 1) {
          const float om = __shfl_xor_sync(kFull, mx[r], o);
          const float os = __shfl_xor_sync(kFull, se[r], o);
          const float nm = fmaxf(mx[r], om);
          if (nm != kNegInf) {
            se[r] = se[r] * expf(mx[r] - nm) + os * expf(om - nm);
            mx[r] = nm;
          }
        }
      }
      float2* const part = a.b.part + (static_cast<std::int64_t>(h) * a.n_kb + kb) * m;
      if (t4 == 0 && ok_lo) part[e_lo] = make_float2(mx[0], se[0]);
      if (t4 == 0 && ok_hi) part[e_hi] = make_float2(mx[1], se[1]);
    }
    cp_async_wait<0>();
    __syncthreads();  // before the next row block's loads reuse sQ and sK
  }
  if constexpr (kSums) {
    float* const vert = a.b.vertical + static_cast<std::int64_t>(h) * n;
    for (int x = tid; x < key_end - key0; x += S::kThreads) vert[key0 + x] = sVert[x];
    float* const sp = a.b.slash_part + (static_cast<std::int64_t>(h) * a.n_kb + kb) * window;
    for (int x = tid; x < window; x += S::kThreads) sp[x] = sSlash[x];
  }
}

// stats[h][e] = (max, sum of exp) of estimate row e over every key, from the CTAs' partials.
__global__ void estimate_stats_kernel(const float2* part, int n_heads, int n_kb, int rows,
                                      const std::int32_t* skip, int skip_stride, float2* stats) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(n_heads) * rows) return;
  const int h = static_cast<int>(idx / rows), e = static_cast<int>(idx % rows);
  if (skip != nullptr && skip[h * skip_stride] != 0) return;
  const float2* p = part + static_cast<std::int64_t>(h) * n_kb * rows + e;
  float m = kNegInf;
  for (int kb = 0; kb < n_kb; ++kb) m = fmaxf(m, p[static_cast<std::int64_t>(kb) * rows].x);
  float l = 0.0f;
  for (int kb = 0; kb < n_kb; ++kb) {
    const float2 v = p[static_cast<std::int64_t>(kb) * rows];
    if (v.x != kNegInf) l += v.y * expf(v.x - m);
  }
  stats[idx] = make_float2(m, l);
}

// slash[h][o] = the sum of the CTA windows that hold diagonal o, in key-block order.
__global__ void slash_reduce_kernel(const float* slash_part, int n_heads, int n, int rows, int n_kb,
                                    const std::int32_t* skip, int skip_stride, float* slash) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(n_heads) * n) return;
  const int h = static_cast<int>(idx / n), o = static_cast<int>(idx % n);
  if (skip != nullptr && skip[h * skip_stride] != 0) return;
  const int window = estimate_window(rows);
  const int key_lo = max(0, n - rows - o), key_hi = n - 1 - o;
  float s = 0.0f;
  for (int kb = key_lo / kEstimateKeys; kb <= key_hi / kEstimateKeys && kb < n_kb; ++kb) {
    const int x = o - n + rows + kb * kEstimateKeys + kEstimateKeys - 1;
    if (x >= 0 && x < window) s += slash_part[(static_cast<std::int64_t>(h) * n_kb + kb) * window + x];
  }
  slash[idx] = s;
}

template <class T, int D, int BM>
void launch_estimate_t(const EstimateArgs<T>& a, cudaStream_t stream) {
  using S = EstShape<D, BM>;
  const std::size_t smem = S::kFixedBytes + static_cast<std::size_t>(estimate_window(a.rows)) * sizeof(float);
  check_cuda(cudaFuncSetAttribute(estimate_kernel<T, D, BM, false>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
             "cudaFuncSetAttribute(sparse estimate)");
  check_cuda(cudaFuncSetAttribute(estimate_kernel<T, D, BM, true>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
             "cudaFuncSetAttribute(sparse estimate)");
  const dim3 grid(static_cast<unsigned>(a.n_heads), static_cast<unsigned>(a.n_kb));
  estimate_kernel<T, D, BM, false><<<grid, S::kThreads, smem, stream>>>(a);
  check_launch("sparse estimate kernel");
  const std::int64_t n_rows = static_cast<std::int64_t>(a.n_heads) * a.rows;
  estimate_stats_kernel<<<blocks_for(n_rows, 256), 256, 0, stream>>>(a.b.part, a.n_heads, a.n_kb, a.rows,
                                                                     a.skip, a.skip_stride, a.b.stats);
  check_launch("sparse estimate stats kernel");
  estimate_kernel<T, D, BM, true><<<grid, S::kThreads, smem, stream>>>(a);
  check_launch("sparse estimate kernel");
  const std::int64_t n_diag = static_cast<std::int64_t>(a.n_heads) * a.kv_len;
  slash_reduce_kernel<<<blocks_for(n_diag, 256), 256, 0, stream>>>(
      a.b.slash_part, a.n_heads, a.kv_len, a.rows, a.n_kb, a.skip, a.skip_stride, a.b.slash);
  check_launch("sparse slash reduce kernel");
}

// ---- pooling ----------------------------------------------------------------------------------

template <class T>
__global__ void pool_keys_kernel(const Keys<T> k, int n, int tile, int d, int n_ktiles, float* out) {
  const int c = static_cast<int>(blockIdx.x), kvh = static_cast<int>(blockIdx.y);
  const int p0 = c * tile, p1 = min(n, p0 + tile);
  for (int x = static_cast<int>(threadIdx.x); x < d; x += static_cast<int>(blockDim.x)) {
    float s = 0.0f;
    for (int p = p0; p < p1; ++p) s += to_float(k.k[key_offset(k, p, kvh * d) + x]);
    out[(static_cast<std::int64_t>(kvh) * n_ktiles + c) * d + x] = s / static_cast<float>(p1 - p0);
  }
}

template <class T>
__global__ void pool_queries_kernel(const T* q, Geometry g, float* out) {
  const int j = static_cast<int>(blockIdx.x), h = static_cast<int>(blockIdx.y);
  const int t = g.first_qtile + j;
  const int r0 = max(0, t * g.tile - g.query_begin), r1 = min(g.query_len, (t + 1) * g.tile - g.query_begin);
  const int d = g.head_dim;
  for (int x = static_cast<int>(threadIdx.x); x < d; x += static_cast<int>(blockDim.x)) {
    float s = 0.0f;
    for (int r = r0; r < r1; ++r) s += to_float(q[(static_cast<std::int64_t>(r) * g.n_heads + h) * d + x]);
    out[(static_cast<std::int64_t>(h) * g.n_qtiles + j) * d + x] = s / static_cast<float>(r1 - r0);
  }
}

// ---- streaming --------------------------------------------------------------------------------

__global__ void streaming_bits_kernel(Geometry g, int sink_tiles, int window_tiles, std::uint32_t* bitmap) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(g.rows()) * g.words) return;
  const int row = static_cast<int>(idx / g.words), w = static_cast<int>(idx % g.words);
  const int t = g.first_qtile + row % g.n_qtiles;
  bitmap[idx] = range_bits(w, 0, min(sink_tiles, t + 1) - 1) | range_bits(w, max(0, t - window_tiles), t);
}

// ---- pooled scores: block top-k and FlexPrefill's query-aware heads ----------------------------

constexpr int kPoolThreads = 256;
constexpr int kPoolKeys = 64;            // key tiles per shared-memory chunk
constexpr int kPoolScoreFloats = 16384;  // target for a CTA's rows of scores (64 KB)

struct PooledArgs {
  Geometry g;
  const float* qbar;
  const float* kbar;
  int rows_per_cta;
  int top_k;                   // block top-k
  std::uint32_t* bitmap;       // block top-k
  const std::int32_t* budget;  // FlexPrefill: [n_heads][3], query-aware flag at 2
  float scale;                 // FlexPrefill
  float* prob;                 // FlexPrefill: [n_heads][n_qtiles][n_ktiles]
};

// CTA: rows_per_cta consecutive rows of one kv head's query heads (row rr of kv head x is query
// head x * group + rr / n_qtiles, tile j = rr % n_qtiles). kFlex false: per row the top_k tiles
// by score with tiles 0 and t forced, into the bitmap. kFlex true (query-aware heads only): per
// row the softmax of scale * score over the causal tiles, into prob (-0 past the row's tile).
template <bool kFlex>
__global__ void __launch_bounds__(kPoolThreads) pooled_kernel(const PooledArgs a) {
  extern __shared__ __align__(16) float pool_smem[];
  const Geometry& g = a.g;
  const int R = a.rows_per_cta, D = g.head_dim, pitch = D + 4, nk = g.n_ktiles;
  const int group = g.n_heads / g.n_kv_heads, per_kv = group * g.n_qtiles;
  const int kvh = static_cast<int>(blockIdx.y);
  const int rr0 = static_cast<int>(blockIdx.x) * R;
  float* const sq = pool_smem;                                      // [R][D]
  float* const sk = sq + R * D;                                     // [kPoolKeys][pitch]
  float* const sc = sk + kPoolKeys * pitch;                         // [R][nk]
  unsigned* const hist = reinterpret_cast<unsigned*>(sc + R * nk);  // [8 warps][256]
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;

  int t_max = -1;
  for (int r = 0; r < R; ++r) {
    const int rr = rr0 + r;
    if (rr >= per_kv) break;
    const int h = kvh * group + rr / g.n_qtiles;
    if (kFlex && a.budget[h * 3 + 2] == 0) continue;
    t_max = max(t_max, g.first_qtile + rr % g.n_qtiles);
  }
  if (t_max < 0) return;
  const int nc = t_max + 1;
  for (int i = tid; i < R * D; i += kPoolThreads) {
    const int rr = rr0 + i / D;
    sq[i] = rr < per_kv ? a.qbar[(static_cast<std::int64_t>(kvh) * per_kv + rr) * D + i % D] : 0.0f;
  }
  const int cl = tid % kPoolKeys, rg = tid / kPoolKeys;  // rows rg, rg + 4, ...
  for (int c0 = 0; c0 < nc; c0 += kPoolKeys) {
    __syncthreads();  // the previous chunk is consumed (and sq written)
    for (int i = tid; i < kPoolKeys * D; i += kPoolThreads) {
      const int cc = i / D, x = i % D, c = c0 + cc;
      sk[cc * pitch + x] = c < nc ? a.kbar[(static_cast<std::int64_t>(kvh) * nk + c) * D + x] : 0.0f;
    }
    __syncthreads();
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const float4* const kr = reinterpret_cast<const float4*>(sk + cl * pitch);
    for (int x4 = 0; x4 < D / 4; ++x4) {
      const float4 kv = kr[x4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int r = rg + 4 * u;
        if (r < R) {
          const float4 qv = reinterpret_cast<const float4*>(sq + r * D)[x4];
          acc[u] = fmaf(qv.x, kv.x, acc[u]);
          acc[u] = fmaf(qv.y, kv.y, acc[u]);
          acc[u] = fmaf(qv.z, kv.z, acc[u]);
          acc[u] = fmaf(qv.w, kv.w, acc[u]);
        }
      }
    }
    const int c = c0 + cl;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int r = rg + 4 * u;
      if (r < R && c < nc) sc[r * nk + c] = acc[u];
    }
  }
  __syncthreads();

  for (int r = warp; r < R; r += kPoolThreads / 32) {
    const int rr = rr0 + r;
    if (rr >= per_kv) break;
    const int h = kvh * group + rr / g.n_qtiles, j = rr % g.n_qtiles, t = g.first_qtile + j;
    const float* const row = sc + r * nk;
    const int n = t + 1;
    if constexpr (!kFlex) {
      auto key_of = [&](int i) { return i == 0 || i == t ? kInfKey : order_key(row[i]); };
      std::uint32_t thr;
      int take;
      warp_topk_threshold(n, a.top_k, key_of, hist + warp * 256, thr, take);
      std::uint32_t* const out = a.bitmap + (static_cast<std::int64_t>(h) * g.n_qtiles + j) * g.words;
      int eq_base = 0;
      for (int base = 0; base < n; base += 32) {
        const int i = base + lane;
        const bool in = i < n;
        const std::uint32_t key = in ? key_of(i) : 0u;
        const bool eq = in && key == thr;
        const unsigned eqb = __ballot_sync(kFull, eq);
        const int rank = eq_base + __popc(eqb & ((1u << lane) - 1u));
        const bool sel = in && (key > thr || (eq && rank < take));
        const unsigned word = __ballot_sync(kFull, sel);
        if (lane == 0) out[base >> 5] = word;
        eq_base += __popc(eqb);
      }
      for (int w = (n + 31) / 32 + lane; w < g.words; w += 32) out[w] = 0u;
    } else {
      if (a.budget[h * 3 + 2] == 0) continue;
      float mx = kNegInf;
      for (int c = lane; c < n; c += 32) mx = fmaxf(mx, a.scale * row[c]);
      mx = warp_max(mx);
      double sum = 0.0;
      for (int c = lane; c < n; c += 32) sum += static_cast<double>(expf(a.scale * row[c] - mx));
      sum = warp_sum(sum);
      float* const out = a.prob + (static_cast<std::int64_t>(h) * g.n_qtiles + j) * nk;
      for (int c = lane; c < nk; c += 32)
        out[c] = c < n ? static_cast<float>(static_cast<double>(expf(a.scale * row[c] - mx)) / sum) : -0.0f;
    }
  }
}

// ---- vertical-slash ---------------------------------------------------------------------------

struct VsSelectArgs {
  const VsHead* sizes;
  int kv_len;
  int forced_columns;
  int forced_diagonals;
  const float* vertical;
  const float* slash;
  std::int32_t* columns;
  int col_cap;
  std::int32_t* column_count;
  std::int32_t* offset_prefix;
};

// CTA (head, which): which 0 = the top columns as an ascending list, 1 = the top diagonals as
// prefix counts.
__global__ void __launch_bounds__(kSelectThreads) vs_select_kernel(const VsSelectArgs a) {
  __shared__ unsigned hist[(kCopies + 1) * 256];
  const int h = static_cast<int>(blockIdx.x), which = static_cast<int>(blockIdx.y);
  const VsHead sz = a.sizes[h];
  const int n = a.kv_len;
  if (sz.dense != 0) {
    if (which == 0 && threadIdx.x == 0) a.column_count[h] = 0;
    return;
  }
  const float* const vals = (which == 0 ? a.vertical : a.slash) + static_cast<std::int64_t>(h) * n;
  const int forced = min(which == 0 ? a.forced_columns : a.forced_diagonals, n);
  const int k = min(max(which == 0 ? sz.vertical : sz.slash, forced), n);
  auto key_of = [&](int i) { return i < forced ? kInfKey : order_key(vals[i]); };
  std::uint32_t thr;
  int take;
  block_topk_threshold<kSelectThreads>(n, k, key_of, hist, thr, take);
  if (which == 0) {
    std::int32_t* const out = a.columns + static_cast<std::int64_t>(h) * a.col_cap;
    const int total =
        block_select_emit<kSelectThreads, 8>(n, key_of, thr, take, [&](int i0, std::uint32_t sel, int rank) {
#pragma unroll
          for (int it = 0; it < 8; ++it)
            if (((sel >> it) & 1u) != 0u) out[rank++] = i0 + it;
        });
    if (threadIdx.x == 0) a.column_count[h] = total;
  } else {
    std::int32_t* const pre = a.offset_prefix + static_cast<std::int64_t>(h) * (n + 1);
    const int total =
        block_select_emit<kSelectThreads, 8>(n, key_of, thr, take, [&](int i0, std::uint32_t sel, int rank) {
#pragma unroll
          for (int it = 0; it < 8; ++it) {
            if (i0 + it >= n) break;
            pre[i0 + it] = rank;
            rank += static_cast<int>((sel >> it) & 1u);
          }
        });
    if (threadIdx.x == 0) pre[n] = total;
  }
}

// band_bits[h] bit d: a selected diagonal within [(d-1)*tile + 1, (d+1)*tile - 1] (the band a full
// query tile sees in the key tile d tiles before its own).
__global__ void vs_band_kernel(const VsHead* sizes, int n_heads, int n, int tile, int n_ktiles,
                               const std::int32_t* prefix, std::uint32_t* band, int band_words) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(n_heads) * band_words) return;
  const int h = static_cast<int>(idx / band_words), w = static_cast<int>(idx % band_words);
  std::uint32_t word = 0u;
  if (sizes[h].dense == 0) {
    const std::int32_t* const pre = prefix + static_cast<std::int64_t>(h) * (n + 1);
    for (int b = 0; b < 32; ++b) {
      const int d = 32 * w + b;
      if (d >= n_ktiles) break;
      const int lo = max(0, (d - 1) * tile + 1), hi = min(n - 1, (d + 1) * tile - 1);
      if (lo <= hi && pre[hi + 1] - pre[lo] > 0) word |= 1u << b;
    }
  }
  band[idx] = word;
}

__global__ void vs_bits_kernel(Geometry g, const VsHead* sizes, const std::int32_t* prefix,
                               const std::uint32_t* band, int band_words, std::uint32_t* bitmap) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(g.rows()) * g.words) return;
  const int row = static_cast<int>(idx / g.words), w = static_cast<int>(idx % g.words);
  const int h = row / g.n_qtiles, t = g.first_qtile + row % g.n_qtiles;
  const int T = g.tile, n = g.kv_len;
  const std::uint32_t causal = range_bits(w, 0, t);
  std::uint32_t word;
  if (sizes[h].dense != 0) {
    word = causal;
  } else {
    const int r0 = max(t * T, g.query_begin), r1 = min((t + 1) * T, n);  // positions of the row
    if (r0 == t * T && r1 == (t + 1) * T) {
      word = __brev(get32(band + static_cast<std::int64_t>(h) * band_words, t - 32 * w - 31)) & causal;
    } else {
      const std::int32_t* const pre = prefix + static_cast<std::int64_t>(h) * (n + 1);
      word = 0u;
      for (int b = 0; b < 32; ++b) {
        const int c = 32 * w + b;
        if (c > t) break;
        const int lo = max(0, r0 - c * T - T + 1), hi = min(n - 1, r1 - 1 - c * T);
        if (lo <= hi && pre[hi + 1] - pre[lo] > 0) word |= 1u << b;
      }
    }
  }
  bitmap[idx] = word;
}

// ---- FlexPrefill ------------------------------------------------------------------------------

// CTA (head, which): the cover count of vertical (0) or slash (1) at share gamma.
__global__ void __launch_bounds__(kSelectThreads)
    flex_cover_kernel(const float* vertical, const float* slash, int n, double gamma, double fixed_scale,
                      std::int32_t* cover) {
  __shared__ unsigned cnt[(kCopies + 1) * 256];
  __shared__ unsigned long long fsum[kCopies * 256];
  __shared__ double total_sum[256];
  const int h = static_cast<int>(blockIdx.x), which = static_cast<int>(blockIdx.y);
  const float* const vals = (which == 0 ? vertical : slash) + static_cast<std::int64_t>(h) * n;
  std::uint32_t thr;
  int take, count;
  block_cover<kSelectThreads>(
      n, gamma, true, fixed_scale, [&](int i) { return order_key(vals[i]); }, cnt, fsum, total_sum, thr, take,
      count);
  if (threadIdx.x == 0) cover[h * 2 + which] = max(count, 1);
}

// v_pool / s_pool [h][c]: the sums of vertical / slash over tile c, in index order.
__global__ void flex_pool_kernel(const float* vertical, const float* slash, int n_heads, int n, int tile,
                                 int n_ktiles, float* v_pool, float* s_pool) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(n_heads) * n_ktiles) return;
  const int h = static_cast<int>(idx / n_ktiles), c = static_cast<int>(idx % n_ktiles);
  const float* const v = vertical + static_cast<std::int64_t>(h) * n;
  const float* const s = slash + static_cast<std::int64_t>(h) * n;
  float a = 0.0f, b = 0.0f;
  for (int i = c * tile; i < min(n, (c + 1) * tile); ++i) {
    a += v[i];
    b += s[i];
  }
  v_pool[idx] = a;
  s_pool[idx] = b;
}

// qmean[h][x] = scale / rows * the sum of the chunk's last `rows` queries.
template <class T>
__global__ void flex_qmean_kernel(const T* q, Geometry g, int rows, float scale, float* qmean) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(g.n_heads) * g.head_dim) return;
  const int h = static_cast<int>(idx / g.head_dim), x = static_cast<int>(idx % g.head_dim);
  float s = 0.0f;
  for (int r = g.query_len - rows; r < g.query_len; ++r)
    s += to_float(q[(static_cast<std::int64_t>(r) * g.n_heads + h) * g.head_dim + x]);
  qmean[idx] = s * (scale / static_cast<float>(rows));
}

// CTA per head: the block-level estimate softmax(qmean . kbar), the JS distance to v_pool, the
// query-aware decision and the final budgets nv, ns.
__global__ void __launch_bounds__(256)
    flex_decide_kernel(Geometry g, FlexParams p, const float* kbar, const FlexBuffers b) {
  using Reduce = cub::BlockReduce<double, 256>;
  using ReduceF = cub::BlockReduce<float, 256>;
  __shared__ typename Reduce::TempStorage rs;
  __shared__ typename ReduceF::TempStorage rf;
  __shared__ float s_max;
  __shared__ double s_a, s_b;
  const int h = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  const int nk = g.n_ktiles, d = g.head_dim, kvh = h / (g.n_heads / g.n_kv_heads);
  const float* const qm = b.qmean + static_cast<std::int64_t>(h) * d;
  float* const est = b.est + static_cast<std::int64_t>(h) * nk;
  const float* const vp = b.v_pool + static_cast<std::int64_t>(h) * nk;
  float mx = kNegInf;
  for (int c = tid; c < nk; c += 256) {
    const float* const kr = kbar + (static_cast<std::int64_t>(kvh) * nk + c) * d;
    float s = 0.0f;
    for (int x = 0; x < d; ++x) s = fmaf(qm[x], kr[x], s);
    est[c] = s;
    mx = fmaxf(mx, s);
  }
  mx = ReduceF(rf).Reduce(mx, [](float x, float y) { return fmaxf(x, y); });
  if (tid == 0) s_max = mx;
  __syncthreads();
  mx = s_max;
  double se = 0.0;
  for (int c = tid; c < nk; c += 256) se += static_cast<double>(expf(est[c] - mx));
  se = Reduce(rs).Sum(se);
  if (tid == 0) s_a = se;
  __syncthreads();
  se = s_a;
  double sp = 0.0, sq = 0.0;
  for (int c = tid; c < nk; c += 256) {
    const float pc = static_cast<float>(static_cast<double>(expf(est[c] - mx)) / se);
    est[c] = pc;
    sp += pc;
    sq += vp[c];
  }
  sp = Reduce(rs).Sum(sp);
  __syncthreads();
  sq = Reduce(rs).Sum(sq);
  if (tid == 0) {
    s_a = sp;
    s_b = sq;
  }
  __syncthreads();
  sp = s_a;
  sq = s_b;
  double js = 0.0;
  for (int c = tid; c < nk; c += 256) {
    const double x = sp > 0 ? est[c] / sp : 0.0, y = sq > 0 ? vp[c] / sq : 0.0, m = 0.5 * (x + y);
    if (x > 0) js += 0.5 * x * log(x / m);
    if (y > 0) js += 0.5 * y * log(y / m);
  }
  __syncthreads();
  js = Reduce(rs).Sum(js);
  if (tid == 0) {
    const bool qa = sqrt(fmax(js, 0.0)) < p.tau;
    int nv = b.cover[h * 2] / g.tile + 1, ns = b.cover[h * 2 + 1] / g.tile + 1;
    if (qa) nv = ns = p.min_blocks;
    const int lo = min(p.min_blocks, nk), hi = min(p.max_blocks, nk);
    b.budget[h * 3] = min(max(nv, lo), hi);
    b.budget[h * 3 + 1] = min(max(ns, lo), hi);
    b.budget[h * 3 + 2] = qa ? 1 : 0;
  }
}

// CTA (head, which): the top nv tiles of v_pool (0) or the top ns tile offsets of s_pool (1),
// index 0 forced, as bits.
__global__ void __launch_bounds__(kSelectThreads) flex_select_kernel(Geometry g, const FlexBuffers b) {
  __shared__ unsigned hist[(kCopies + 1) * 256];
  const int h = static_cast<int>(blockIdx.x), which = static_cast<int>(blockIdx.y);
  const int nk = g.n_ktiles;
  const float* const vals = (which == 0 ? b.v_pool : b.s_pool) + static_cast<std::int64_t>(h) * nk;
  const int k = b.budget[h * 3 + which];
  std::uint32_t* const bits = (which == 0 ? b.v_bits : b.o_bits) + static_cast<std::int64_t>(h) * b.kwords;
  auto key_of = [&](int i) { return i == 0 ? kInfKey : order_key(vals[i]); };
  std::uint32_t thr;
  int take;
  block_topk_threshold<kSelectThreads>(nk, k, key_of, hist, thr, take);
  block_select_emit<kSelectThreads, 32>(nk, key_of, thr, take, [&](int i0, std::uint32_t sel, int) {
    if (i0 < nk) bits[i0 >> 5] = sel;
  });
}

__global__ void flex_bits_kernel(Geometry g, const FlexBuffers b, std::uint32_t* bitmap) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= static_cast<std::int64_t>(g.rows()) * g.words) return;
  const int row = static_cast<int>(idx / g.words), w = static_cast<int>(idx % g.words);
  const int h = row / g.n_qtiles, t = g.first_qtile + row % g.n_qtiles;
  const std::uint32_t* const vb = b.v_bits + static_cast<std::int64_t>(h) * b.kwords;
  const std::uint32_t* const ob = b.o_bits + static_cast<std::int64_t>(h) * b.kwords;
  bitmap[idx] = (vb[w] | __brev(get32(ob, t - 32 * w - 31))) & range_bits(w, 0, t);
}

// CTA per query-aware head: the largest pooled probabilities over all its rows until they cover
// gamma * n_qtiles, OR-ed into the rows' bitmaps.
constexpr int kQaThreads = 1024;
__global__ void __launch_bounds__(kQaThreads)
    flex_qa_kernel(Geometry g, double gamma, double fixed_scale, const FlexBuffers b, std::uint32_t* bitmap) {
  __shared__ unsigned cnt[(kCopies + 1) * 256];
  __shared__ unsigned long long fsum[kCopies * 256];
  __shared__ double total_sum[256];
  const int h = static_cast<int>(blockIdx.x);
  if (b.budget[h * 3 + 2] == 0) return;
  const int nk = g.n_ktiles;
  const float* const prob = b.prob + static_cast<std::int64_t>(h) * g.n_qtiles * nk;
  const int n = g.n_qtiles * nk;
  auto key_of = [&](int i) { return order_key(prob[i]); };
  std::uint32_t thr;
  int take, count;
  block_cover<kQaThreads>(n, gamma * g.n_qtiles, false, fixed_scale, key_of, cnt, fsum, total_sum, thr, take,
                          count);
  std::uint32_t* const rows = bitmap + static_cast<std::int64_t>(h) * g.n_qtiles * g.words;
  block_select_emit<kQaThreads, 8>(n, key_of, thr, take, [&](int i0, std::uint32_t sel, int) {
    while (sel != 0u) {
      const int f = i0 + __ffs(sel) - 1;
      sel &= sel - 1u;
      const int j = f / nk, c = f - j * nk;
      atomicOr(rows + static_cast<std::int64_t>(j) * g.words + (c >> 5), 1u << (c & 31));
    }
  });
}

// ---- CSR assembly ------------------------------------------------------------------------------

__global__ void count_rows_kernel(Geometry g, const std::uint32_t* bitmap, const std::int32_t* columns,
                                  int col_cap, const std::int32_t* column_count, std::int32_t* tile_counts,
                                  std::int32_t* column_counts) {
  const std::int64_t row64 = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (row64 >= g.rows()) return;  // whole warps
  const int row = static_cast<int>(row64), lane = static_cast<int>(threadIdx.x & 31);
  const std::uint32_t* const bm = bitmap + static_cast<std::int64_t>(row) * g.words;
  int tiles = 0;
  for (int w = lane; w < g.words; w += 32) tiles += __popc(bm[w]);
  tiles = warp_sum(tiles);
  int cols = 0;
  if (columns != nullptr) {
    const int h = row / g.n_qtiles, t = g.first_qtile + row % g.n_qtiles, limit = t * g.tile;
    const std::int32_t* const cl = columns + static_cast<std::int64_t>(h) * col_cap;
    const int nc = column_count[h];
    for (int i = lane; i < nc; i += 32) {
      const int p = cl[i];
      if (p >= limit) break;  // ascending
      const int c = p / g.tile;
      if (((bm[c >> 5] >> (c & 31)) & 1u) == 0u) ++cols;
    }
    cols = warp_sum(cols);
  }
  if (lane == 0) {
    tile_counts[row] = tiles;
    if (column_counts != nullptr) column_counts[row] = cols;
  }
}

__global__ void emit_rows_kernel(Geometry g, const std::uint32_t* bitmap, const std::int32_t* columns,
                                 int col_cap, const std::int32_t* column_count, const std::int32_t* row_ptr,
                                 std::int32_t* col_idx, const std::int32_t* column_ptr,
                                 std::int32_t* column_idx) {
  const std::int64_t row64 = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (row64 >= g.rows()) return;
  const int row = static_cast<int>(row64), lane = static_cast<int>(threadIdx.x & 31);
  const unsigned lt = (1u << lane) - 1u;
  const std::uint32_t* const bm = bitmap + static_cast<std::int64_t>(row) * g.words;
  std::int32_t* const out = col_idx + row_ptr[row];
  int written = 0;
  for (int w0 = 0; w0 < g.words; w0 += 32) {
    const int w = w0 + lane;
    std::uint32_t word = w < g.words ? bm[w] : 0u;
    const int cnt = __popc(word);
    int incl = cnt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(kFull, incl, o);
      if (lane >= o) incl += v;
    }
    int pos = written + incl - cnt;
    while (word != 0u) {
      out[pos++] = 32 * w + __ffs(word) - 1;
      word &= word - 1u;
    }
    written += __shfl_sync(kFull, incl, 31);
  }
  if (columns == nullptr || column_ptr == nullptr) return;
  const int h = row / g.n_qtiles, t = g.first_qtile + row % g.n_qtiles, limit = t * g.tile;
  const std::int32_t* const cl = columns + static_cast<std::int64_t>(h) * col_cap;
  const int nc = column_count[h];
  std::int32_t* const outc = column_idx + column_ptr[row];
  written = 0;
  for (int i0 = 0; i0 < nc; i0 += 32) {
    const int i = i0 + lane;
    const int p = i < nc ? cl[i] : INT_MAX;
    bool keep = false;
    if (p < limit) {
      const int c = p / g.tile;
      keep = ((bm[c >> 5] >> (c & 31)) & 1u) == 0u;
    }
    const unsigned kb = __ballot_sync(kFull, keep);
    if (keep) outc[written + __popc(kb & lt)] = p;
    written += __popc(kb);
    if (__shfl_sync(kFull, p, 31) >= limit) break;  // ascending: the rest are past the row
  }
}

__global__ void record_counts_kernel(const std::int32_t* row_ptr, const std::int32_t* column_ptr,
                                     const std::int32_t* chunk_rows, int n_chunks, std::int32_t* out) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= n_chunks) return;
  const int b = chunk_rows[i], e = chunk_rows[i + 1];
  out[2 * i] = row_ptr[e] - row_ptr[b];
  out[2 * i + 1] = column_ptr != nullptr ? column_ptr[e] - column_ptr[b] : 0;
}

}  // namespace

// ---- launchers ----------------------------------------------------------------------------------

template <class T>
void last_query_estimate(const Geometry& g, const T* q, const Keys<T>& keys, int rows, float scale,
                         const std::int32_t* skip, int skip_stride, const EstimateBuffers& b,
                         cudaStream_t stream) {
  if (rows <= 0 || g.kv_len <= 0) return;
  EstimateArgs<T> a{q,
                    keys,
                    g.n_heads,
                    g.n_heads / g.n_kv_heads,
                    g.query_len,
                    g.kv_len,
                    rows,
                    scale,
                    skip,
                    skip_stride,
                    estimate_blocks(g.kv_len),
                    b};
  const bool wide = rows > 64;
  if (g.head_dim == 64) {
    wide ? launch_estimate_t<T, 64, 128>(a, stream) : launch_estimate_t<T, 64, 64>(a, stream);
  } else {
    wide ? launch_estimate_t<T, 128, 128>(a, stream) : launch_estimate_t<T, 128, 64>(a, stream);
  }
}

template <class T>
void pool_keys(const Geometry& g, const Keys<T>& keys, float* kbar, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(g.n_ktiles), static_cast<unsigned>(g.n_kv_heads));
  pool_keys_kernel<T><<<grid, g.head_dim, 0, stream>>>(keys, g.kv_len, g.tile, g.head_dim, g.n_ktiles, kbar);
  check_launch("sparse pool keys kernel");
}

template <class T>
void pool_queries(const Geometry& g, const T* q, float* qbar, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(g.n_qtiles), static_cast<unsigned>(g.n_heads));
  pool_queries_kernel<T><<<grid, g.head_dim, 0, stream>>>(q, g, qbar);
  check_launch("sparse pool queries kernel");
}

void streaming_bits(const Geometry& g, int sink_tiles, int window_tiles, std::uint32_t* bitmap,
                    cudaStream_t stream) {
  const std::int64_t n = static_cast<std::int64_t>(g.rows()) * g.words;
  if (n == 0) return;
  streaming_bits_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(g, sink_tiles, window_tiles, bitmap);
  check_launch("sparse streaming kernel");
}

int pooled_rows_per_cta(int n_ktiles, int head_dim) {
  const int r = std::clamp(kPoolScoreFloats / std::max(n_ktiles, 1), 1, 16);
  return pooled_smem_bytes(n_ktiles, head_dim) > 200 * 1024 ? 0 : r;
}

std::size_t pooled_smem_bytes(int n_ktiles, int head_dim) {
  const int r = std::clamp(kPoolScoreFloats / std::max(n_ktiles, 1), 1, 16);
  return static_cast<std::size_t>(r * head_dim + kPoolKeys * (head_dim + 4) + r * n_ktiles) * sizeof(float) +
         static_cast<std::size_t>(kPoolThreads / 32) * 256 * sizeof(unsigned);
}

namespace {
template <bool kFlex>
void launch_pooled(const PooledArgs& a, cudaStream_t stream) {
  const Geometry& g = a.g;
  const std::size_t smem = pooled_smem_bytes(g.n_ktiles, g.head_dim);
  check_cuda(cudaFuncSetAttribute(pooled_kernel<kFlex>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)),
             "cudaFuncSetAttribute(sparse pooled scores)");
  const int per_kv = g.n_heads / g.n_kv_heads * g.n_qtiles;
  const dim3 grid(static_cast<unsigned>(blocks_for(per_kv, a.rows_per_cta)),
                  static_cast<unsigned>(g.n_kv_heads));
  pooled_kernel<kFlex><<<grid, kPoolThreads, smem, stream>>>(a);
  check_launch("sparse pooled scores kernel");
}
}  // namespace

void block_topk_bits(const Geometry& g, const float* qbar, const float* kbar, int top_k,
                     std::uint32_t* bitmap, cudaStream_t stream) {
  PooledArgs a{g,       qbar, kbar,   pooled_rows_per_cta(g.n_ktiles, g.head_dim), top_k, bitmap,
               nullptr, 1.0f, nullptr};
  launch_pooled<false>(a, stream);
}

void vs_select(const Geometry& g, const VsHead* sizes, int forced_columns, int forced_diagonals,
               const float* vertical, const float* slash, std::int32_t* columns, int col_cap,
               std::int32_t* column_count, std::int32_t* offset_prefix, std::uint32_t* band_bits,
               int band_words, cudaStream_t stream) {
  const VsSelectArgs a{sizes, g.kv_len, forced_columns, forced_diagonals, vertical,
                       slash, columns,  col_cap,        column_count,     offset_prefix};
  vs_select_kernel<<<dim3(static_cast<unsigned>(g.n_heads), 2), kSelectThreads, 0, stream>>>(a);
  check_launch("sparse vertical-slash select kernel");
  const std::int64_t n = static_cast<std::int64_t>(g.n_heads) * band_words;
  vs_band_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(sizes, g.n_heads, g.kv_len, g.tile, g.n_ktiles,
                                                         offset_prefix, band_bits, band_words);
  check_launch("sparse vertical-slash band kernel");
}

void vs_bits(const Geometry& g, const VsHead* sizes, const std::int32_t* offset_prefix,
             const std::uint32_t* band_bits, int band_words, std::uint32_t* bitmap, cudaStream_t stream) {
  const std::int64_t n = static_cast<std::int64_t>(g.rows()) * g.words;
  if (n == 0) return;
  vs_bits_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(g, sizes, offset_prefix, band_bits, band_words,
                                                         bitmap);
  check_launch("sparse vertical-slash bits kernel");
}

template <class T>
void flex_prefill(const Geometry& g, const T* q, const FlexParams& p, const float* vertical,
                  const float* slash, const float* kbar, float* qbar, const FlexBuffers& b,
                  std::uint32_t* bitmap, cudaStream_t stream) {
  const int H = g.n_heads, nk = g.n_ktiles;
  // Each estimate row sums to 1: vertical and slash total est_rows (a little more by rounding).
  flex_cover_kernel<<<dim3(static_cast<unsigned>(H), 2), kSelectThreads, 0, stream>>>(
      vertical, slash, g.kv_len, p.gamma, fixed_scale_for(p.est_rows), b.cover);
  check_launch("sparse flex cover kernel");
  const std::int64_t pools = static_cast<std::int64_t>(H) * nk;
  flex_pool_kernel<<<blocks_for(pools, 256), 256, 0, stream>>>(vertical, slash, H, g.kv_len, g.tile, nk,
                                                               b.v_pool, b.s_pool);
  check_launch("sparse flex pool kernel");
  const std::int64_t qm = static_cast<std::int64_t>(H) * g.head_dim;
  flex_qmean_kernel<T><<<blocks_for(qm, 256), 256, 0, stream>>>(q, g, p.est_rows, p.scale, b.qmean);
  check_launch("sparse flex qmean kernel");
  flex_decide_kernel<<<H, 256, 0, stream>>>(g, p, kbar, b);
  check_launch("sparse flex decide kernel");
  check_cuda(
      cudaMemsetAsync(b.v_bits, 0, static_cast<std::size_t>(H) * b.kwords * sizeof(std::uint32_t), stream),
      "clear flex bits");
  check_cuda(
      cudaMemsetAsync(b.o_bits, 0, static_cast<std::size_t>(H) * b.kwords * sizeof(std::uint32_t), stream),
      "clear flex bits");
  flex_select_kernel<<<dim3(static_cast<unsigned>(H), 2), kSelectThreads, 0, stream>>>(g, b);
  check_launch("sparse flex select kernel");
  const std::int64_t n = static_cast<std::int64_t>(g.rows()) * g.words;
  flex_bits_kernel<<<blocks_for(n, 256), 256, 0, stream>>>(g, b, bitmap);
  check_launch("sparse flex bits kernel");
  // Query-aware heads (the kernels skip the others: which ones is only known on the device).
  pool_queries(g, q, qbar, stream);
  PooledArgs a{g, qbar, kbar, pooled_rows_per_cta(nk, g.head_dim), 0, nullptr, b.budget, p.scale, b.prob};
  launch_pooled<true>(a, stream);
  flex_qa_kernel<<<H, kQaThreads, 0, stream>>>(g, p.gamma, fixed_scale_for(g.n_qtiles), b, bitmap);
  check_launch("sparse flex query-aware kernel");
}

void count_rows(const Geometry& g, const std::uint32_t* bitmap, const std::int32_t* columns, int col_cap,
                const std::int32_t* column_count, std::int32_t* tile_counts, std::int32_t* column_counts,
                cudaStream_t stream) {
  const std::int64_t threads = static_cast<std::int64_t>(g.rows()) * 32;
  if (threads == 0) return;
  count_rows_kernel<<<blocks_for(threads, 256), 256, 0, stream>>>(g, bitmap, columns, col_cap, column_count,
                                                                  tile_counts, column_counts);
  check_launch("sparse count kernel");
}

void emit_rows(const Geometry& g, const std::uint32_t* bitmap, const std::int32_t* columns, int col_cap,
               const std::int32_t* column_count, const std::int32_t* row_ptr, std::int32_t* col_idx,
               const std::int32_t* column_ptr, std::int32_t* column_idx, cudaStream_t stream) {
  const std::int64_t threads = static_cast<std::int64_t>(g.rows()) * 32;
  if (threads == 0) return;
  emit_rows_kernel<<<blocks_for(threads, 256), 256, 0, stream>>>(g, bitmap, columns, col_cap, column_count,
                                                                 row_ptr, col_idx, column_ptr, column_idx);
  check_launch("sparse emit kernel");
}

std::size_t scan_temp_bytes(int n) {
  std::size_t bytes = 0;
  check_cuda(cub::DeviceScan::ExclusiveSum(nullptr, bytes, static_cast<const std::int32_t*>(nullptr),
                                           static_cast<std::int32_t*>(nullptr), n),
             "cub::DeviceScan::ExclusiveSum (size)");
  return bytes;
}

void exclusive_scan(const std::int32_t* in, std::int32_t* out, int n, void* temp, std::size_t temp_bytes,
                    cudaStream_t stream) {
  check_cuda(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, in, out, n, stream),
             "cub::DeviceScan::ExclusiveSum");
}

void record_counts(const std::int32_t* row_ptr, const std::int32_t* column_ptr,
                   const std::int32_t* chunk_rows, int n_chunks, std::int32_t* out, cudaStream_t stream) {
  if (n_chunks <= 0) return;
  record_counts_kernel<<<blocks_for(n_chunks, 128), 128, 0, stream>>>(row_ptr, column_ptr, chunk_rows,
                                                                      n_chunks, out);
  check_launch("sparse record kernel");
}

#define CHUNKWISE_SPARSE_INDEX_INSTANTIATE(T)                                                             \
  template void last_query_estimate<T>(const Geometry&, const T*, const Keys<T>&, int, float,             \
                                       const std::int32_t*, int, const EstimateBuffers&, cudaStream_t);   \
  template void pool_keys<T>(const Geometry&, const Keys<T>&, float*, cudaStream_t);                      \
  template void pool_queries<T>(const Geometry&, const T*, float*, cudaStream_t);                         \
  template void flex_prefill<T>(const Geometry&, const T*, const FlexParams&, const float*, const float*, \
                                const float*, float*, const FlexBuffers&, std::uint32_t*, cudaStream_t);
CHUNKWISE_SPARSE_INDEX_INSTANTIATE(bf16)
CHUNKWISE_SPARSE_INDEX_INSTANTIATE(f16)
#undef CHUNKWISE_SPARSE_INDEX_INSTANTIATE

}  // namespace chunkwise::cuda::sparse_index
