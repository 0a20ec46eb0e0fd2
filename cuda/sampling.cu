// Token sampling on the device, drawing exactly what chunkwise::sample() (src/core/sampling.cpp)
// draws on the host. One CTA per row:
//   1. one pass: argmax (NaN never wins, ties to the lowest id), the max logit and the number of
//      candidates (logits > -inf). Greedy rows and the host's fallbacks stop here.
//   2. top-k: radix select of the k-th candidate in the host's order (logit desc, id asc) on a
//      64-bit key (order-preserving logit bits << 32 | vocab-1-id, unique per token), counting.
//   3. top-p: the same radix select weighted by the candidates' weights finds the shortest head of
//      that order whose mass reaches top_p of the kept mass.
//   4. the kept candidates in id order: u = uniform(seed, step) * mass and the first token whose
//      cumulative weight exceeds u (a block-wide prefix sum per tile).
// Weights are the host's float exp((logit - max) * (1/temperature)), bit for bit (glibc's expf
// algorithm below), held as 128-bit fixed-point integers so that every sum and comparison is exact
// and deterministic. See sample_tokens() in chunkwise/cuda/ops.hpp for what that buys.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "chunkwise/core/detail/counter_rng.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/common.hpp"
#include "chunkwise/cuda/ops.hpp"

namespace chunkwise::cuda {

// ---- device code ------------------------------------------------------------------------------
namespace {

using u32 = unsigned int;
using u64 = unsigned long long;

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kSampleThreads = 512;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kBinBits = 11;
constexpr int kBins = 1 << kBinBits;
constexpr int kTile = 4 * kSampleThreads;  // elements per tile of the final id-order scan

// ---- glibc's expf, step by step ----
// sysdeps/ieee754/flt-32/e_expf.c (glibc >= 2.27) as built for x86-64 with FMA (the ifunc variant
// every AVX2 + FMA machine uses): the contractions below are the ones in that binary. Every double
// operation is an explicit round-to-nearest intrinsic so nvcc cannot re-associate or fuse them.
constexpr double kExpInvLn2N = 0x1.71547652b82fep+5;  // 32 / ln 2
constexpr double kExpShift = 0x1.8p+52;
constexpr double kExpC0 = 0x1.c6af84b912394p-20;
constexpr double kExpC1 = 0x1.ebfce50fac4f3p-13;
constexpr double kExpC2 = 0x1.62e42ff0c52d6p-6;
// __exp2f_data.tab: 2^(i/32) with the exponent bits pre-subtracted.
__device__ const u64 kExp2fTab[32] = {
    0x3ff0000000000000ULL, 0x3fefd9b0d3158574ULL, 0x3fefb5586cf9890fULL, 0x3fef9301d0125b51ULL,
    0x3fef72b83c7d517bULL, 0x3fef54873168b9aaULL, 0x3fef387a6e756238ULL, 0x3fef1e9df51fdee1ULL,
    0x3fef06fe0a31b715ULL, 0x3feef1a7373aa9cbULL, 0x3feedea64c123422ULL, 0x3feece086061892dULL,
    0x3feebfdad5362a27ULL, 0x3feeb42b569d4f82ULL, 0x3feeab07dd485429ULL, 0x3feea47eb03a5585ULL,
    0x3feea09e667f3bcdULL, 0x3fee9f75e8ec5f74ULL, 0x3feea11473eb0187ULL, 0x3feea589994cce13ULL,
    0x3feeace5422aa0dbULL, 0x3feeb737b0cdc5e5ULL, 0x3feec49182a3f090ULL, 0x3feed503b23e255dULL,
    0x3feee89f995ad3adULL, 0x3feeff76f2fb5e47ULL, 0x3fef199bdd85529cULL, 0x3fef3720dcef9069ULL,
    0x3fef5818dcfba487ULL, 0x3fef7c97337b9b5fULL, 0x3fefa4afa2a490daULL, 0x3fefd0765b6e4540ULL,
};

__device__ __forceinline__ float glibc_expf(float x) {
  const u32 ix = __float_as_uint(x);
  const u32 abstop = (ix >> 20) & 0x7ffu;
  if (abstop >= 0x42bu) {  // |x| >= 88, inf or NaN
    if (ix == 0xff800000u) return 0.0f;
    if (abstop >= 0x7f8u) return __fadd_rn(x, x);
    if (x > 0x1.62e42ep6f) return __uint_as_float(0x7f800000u);  // overflow
    if (x < -0x1.9fe368p6f) return 0.0f;                         // underflow
    if (x < -0x1.9d1d9ep6f) return __uint_as_float(1u);          // __math_may_uflowf: 0x1.4p-75f^2 = 2^-149
  }
  const double xd = static_cast<double>(x);
  double kd = __fma_rn(kExpInvLn2N, xd, kExpShift);
  const u64 ki = static_cast<u64>(__double_as_longlong(kd));
  kd = __dsub_rn(kd, kExpShift);
  const double r = __fma_rn(kExpInvLn2N, xd, -kd);
  const u64 t = kExp2fTab[ki & 31u] + (ki << 47);
  const double s = __longlong_as_double(static_cast<long long>(t));
  const double z = __fma_rn(kExpC0, r, kExpC1);
  const double r2 = __dmul_rn(r, r);
  double y = __fma_rn(kExpC2, r, 1.0);
  y = __fma_rn(z, r2, y);
  y = __dmul_rn(y, s);
  return __double2float_rn(y);
}

// ---- 128-bit unsigned fixed point: weight * 2^96 ----

struct U128 {
  u64 lo;
  u64 hi;
};

__device__ __forceinline__ U128 u128(u64 v) { return U128{v, 0}; }
__device__ __forceinline__ U128 add(U128 a, U128 b) {
  U128 r;
  r.lo = a.lo + b.lo;
  r.hi = a.hi + b.hi + (r.lo < a.lo ? 1ULL : 0ULL);
  return r;
}
__device__ __forceinline__ U128 sub(U128 a, U128 b) {
  U128 r;
  r.lo = a.lo - b.lo;
  r.hi = a.hi - b.hi - (a.lo < b.lo ? 1ULL : 0ULL);
  return r;
}
__device__ __forceinline__ bool less(U128 a, U128 b) { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo); }
__device__ __forceinline__ bool equal(U128 a, U128 b) { return a.hi == b.hi && a.lo == b.lo; }

__device__ __forceinline__ U128 shfl_xor(U128 v, int m) {
  return U128{__shfl_xor_sync(kFullWarp, v.lo, m), __shfl_xor_sync(kFullWarp, v.hi, m)};
}
__device__ __forceinline__ U128 shfl_up(U128 v, int d) {
  return U128{__shfl_up_sync(kFullWarp, v.lo, d), __shfl_up_sync(kFullWarp, v.hi, d)};
}
__device__ __forceinline__ U128 shfl_down(U128 v, int d) {
  return U128{__shfl_down_sync(kFullWarp, v.lo, d), __shfl_down_sync(kFullWarp, v.hi, d)};
}

// w * 2^96 for a float 0 <= w <= 1 (exact for w >= 2^-73, truncated below).
__device__ __forceinline__ U128 to_fixed(float w) {
  const u32 b = __float_as_uint(w);
  const u32 e8 = (b >> 23) & 0xffu;
  u64 m = b & 0x7fffffu;
  int e = -149;  // w = m * 2^e
  if (e8 != 0) {
    m |= 0x800000u;
    e = static_cast<int>(e8) - 150;
  }
  const int sh = e + 96;
  U128 r{0, 0};
  if (m == 0 || (b >> 31) != 0) return r;
  if (sh >= 64) {
    r.hi = m << (sh - 64);
  } else if (sh > 0) {
    r.lo = m << sh;
    r.hi = m >> (64 - sh);
  } else if (sh == 0) {
    r.lo = m;
  } else if (sh > -64) {
    r.lo = m >> (-sh);
  }
  return r;
}

// floor (or ceil) of a * m / 2^s, exactly; the result must fit in 128 bits (m < 2^64, 0 <= s < 192).
__device__ U128 mul_shift(U128 a, u64 m, int s, bool round_up) {
  u64 w[5];
  w[0] = a.lo * m;
  const u64 p0hi = __umul64hi(a.lo, m);
  const u64 p1lo = a.hi * m;
  w[1] = p0hi + p1lo;
  w[2] = __umul64hi(a.hi, m) + (w[1] < p0hi ? 1ULL : 0ULL);
  w[3] = 0;
  w[4] = 0;
  const int k = s >> 6;
  const int b = s & 63;
  auto funnel = [b](u64 lo, u64 hi) { return b == 0 ? lo : (lo >> b) | (hi << (64 - b)); };
  U128 r{funnel(w[k], w[k + 1]), funnel(w[k + 1], w[k + 2])};
  bool rem = b != 0 && (w[k] & ((1ULL << b) - 1)) != 0;
  for (int j = 0; j < k; ++j) rem = rem || w[j] != 0;
  if (round_up && rem) r = add(r, u128(1));
  return r;
}

// ---- candidates ----

// Unique 64-bit key ordering candidates as the host does: higher logit first, equal logits by lower
// id. Order-preserving float bits (with -0 folded into +0: they compare equal) above vocab-1-id.
__device__ __forceinline__ u64 order_key(float l, int i, int vocab) {
  u32 b = __float_as_uint(l);
  if ((b << 1) == 0) b = 0;
  const u32 key = (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
  return (static_cast<u64>(key) << 32) | static_cast<u32>(vocab - 1 - i);
}

__device__ __forceinline__ bool is_candidate(float l) { return l > -INFINITY; }

struct Weigher {
  float max_logit;
  float inv_t;
  // The host's weight: std::exp((logit - max_logit) * inv_t), all in float.
  __device__ __forceinline__ U128 fixed(float l) const {
    return to_fixed(glibc_expf(__fmul_rn(__fsub_rn(l, max_logit), inv_t)));
  }
};

struct SampleShared {
  u32 cnt[kBins];
  u64 w_lo[kBins];
  u64 w_hi[kBins];
  U128 warp_u128[kSampleWarps];
  float warp_val[kSampleWarps];
  int warp_idx[kSampleWarps];
  int warp_int[kSampleWarps];
  U128 above;
  int sel;
  int done;
};

// f(i, logit) for every logit of the row, coalesced (float4 when vec4).
template <class F>
__device__ __forceinline__ void for_each_logit(const float* row, int vocab, bool vec4, F&& f) {
  if (vec4) {
    const auto* r4 = reinterpret_cast<const float4*>(row);
    const int n4 = vocab >> 2;
    for (int j = static_cast<int>(threadIdx.x); j < n4; j += kSampleThreads) {
      const float4 v = __ldg(r4 + j);
      f(4 * j, v.x);
      f(4 * j + 1, v.y);
      f(4 * j + 2, v.z);
      f(4 * j + 3, v.w);
    }
  } else {
    for (int i = static_cast<int>(threadIdx.x); i < vocab; i += kSampleThreads) f(i, __ldg(row + i));
  }
}

// ---- block reductions (kSampleThreads threads; every thread gets the result) ----

__device__ U128 block_sum(U128 v, SampleShared& sh) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = add(v, shfl_xor(v, o));
  if (lane == 0) sh.warp_u128[warp] = v;
  __syncthreads();
  U128 t{0, 0};
  for (int w = 0; w < kSampleWarps; ++w) t = add(t, sh.warp_u128[w]);
  __syncthreads();
  return t;
}

__device__ int block_sum(int v, SampleShared& sh) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullWarp, v, o);
  if (lane == 0) sh.warp_int[warp] = v;
  __syncthreads();
  int t = 0;
  for (int w = 0; w < kSampleWarps; ++w) t += sh.warp_int[w];
  __syncthreads();
  return t;
}

__device__ int block_max(int v, SampleShared& sh) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullWarp, v, o));
  if (lane == 0) sh.warp_int[warp] = v;
  __syncthreads();
  int t = sh.warp_int[0];
  for (int w = 1; w < kSampleWarps; ++w) t = max(t, sh.warp_int[w]);
  __syncthreads();
  return t;
}

// (value, index) with the host's argmax rule: higher value, then lower index; index -1 = none.
struct Best {
  float v;
  int i;
};
__device__ __forceinline__ Best better(Best a, Best b) {
  if (a.i < 0) return b;
  if (b.i < 0) return a;
  if (a.v > b.v || (a.v == b.v && a.i < b.i)) return a;
  return b;
}

__device__ Best block_best(Best v, SampleShared& sh) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Best other{__shfl_xor_sync(kFullWarp, v.v, o), __shfl_xor_sync(kFullWarp, v.i, o)};
    v = better(v, other);
  }
  if (lane == 0) {
    sh.warp_val[warp] = v.v;
    sh.warp_idx[warp] = v.i;
  }
  __syncthreads();
  Best t{-INFINITY, -1};
  for (int w = 0; w < kSampleWarps; ++w) t = better(t, Best{sh.warp_val[w], sh.warp_idx[w]});
  __syncthreads();
  return t;
}

// Exclusive prefix sum over the block in thread order; total = the sum over all threads.
__device__ U128 block_exclusive_scan(U128 v, U128& total, SampleShared& sh) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  U128 inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const U128 n = shfl_up(inc, o);
    if (lane >= o) inc = add(inc, n);
  }
  if (lane == 31) sh.warp_u128[warp] = inc;
  __syncthreads();
  U128 before{0, 0};
  total = U128{0, 0};
  for (int w = 0; w < kSampleWarps; ++w) {
    const U128 t = sh.warp_u128[w];
    if (w < warp) before = add(before, t);
    total = add(total, t);
  }
  __syncthreads();
  return add(before, sub(inc, v));
}

// ---- radix select ----

template <bool kWeighted>
__device__ __forceinline__ U128 bin_value(const SampleShared& sh, int b) {
  if constexpr (kWeighted) {
    return U128{sh.w_lo[b], sh.w_hi[b]};
  } else {
    return u128(sh.cnt[b]);
  }
}

// Among the candidates with key >= lower, the largest key c such that the candidates with key >= c
// hold at least `target` (count mode: that many candidates; weighted: that much fixed-point weight).
// Returns a threshold t with {candidates with key >= t} = {candidates with key >= c} (t <= c when a
// whole radix bucket qualifies at once). Needs: the candidates with key >= lower hold >= target.
template <bool kWeighted>
__device__ u64 radix_select(const float* lg, int vocab, bool vec4, u64 lower, U128 target, const Weigher& wgt,
                            SampleShared& sh) {
  // Digits from the top: the 32 logit-key bits in 11 + 11 + 10, then the id bits in <= 11-bit steps.
  int shifts[6];
  int widths[6];
  int n_levels = 0;
  shifts[n_levels] = 53, widths[n_levels++] = 11;
  shifts[n_levels] = 42, widths[n_levels++] = 11;
  shifts[n_levels] = 32, widths[n_levels++] = 10;
  for (int top = vocab > 1 ? 32 - __clz(vocab - 1) : 0; top > 0;) {
    const int w = top < kBinBits ? top : kBinBits;
    top -= w;
    shifts[n_levels] = top, widths[n_levels++] = w;
  }
  const int tid = static_cast<int>(threadIdx.x);
  u64 prefix = 0;
  U128 above{0, 0};  // weight (or count) of the candidates above the current bucket; < target
  for (int level = 0; level < n_levels; ++level) {
    const int shift = shifts[level];
    const int n_bins = 1 << widths[level];
    const int high = shift + widths[level];  // key bits at and above `high` must equal prefix's
    for (int b = tid; b < n_bins; b += kSampleThreads) {
      sh.cnt[b] = 0;
      if constexpr (kWeighted) {
        sh.w_lo[b] = 0;
        sh.w_hi[b] = 0;
      }
    }
    __syncthreads();
    for_each_logit(lg, vocab, vec4, [&](int i, float l) {
      if (!is_candidate(l)) return;
      const u64 key = order_key(l, i, vocab);
      if (key < lower) return;
      if (high < 64 && (key >> high) != (prefix >> high)) return;
      const int b = static_cast<int>((key >> shift) & static_cast<u64>(n_bins - 1));
      atomicAdd(&sh.cnt[b], 1u);
      if constexpr (kWeighted) {
        const U128 q = wgt.fixed(l);
        const u64 old = atomicAdd(&sh.w_lo[b], q.lo);
        const u64 hi = q.hi + (old + q.lo < old ? 1ULL : 0ULL);
        if (hi != 0) atomicAdd(&sh.w_hi[b], hi);
      }
    });
    __syncthreads();
    if (tid < 32) {
      // Warp 0 finds the highest bucket b with above + sum(buckets >= b) >= target. Lane j owns
      // buckets [j*n/32, (j+1)*n/32); S = sum over lanes >= j (non-increasing in j).
      const int lane = tid;
      const int b_lo = lane * n_bins / 32;
      const int b_hi = (lane + 1) * n_bins / 32;
      U128 s{0, 0};
      for (int b = b_lo; b < b_hi; ++b) s = add(s, bin_value<kWeighted>(sh, b));
      U128 suffix = s;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const U128 n = shfl_down(suffix, o);
        if (lane + o < 32) suffix = add(suffix, n);
      }
      const U128 need = sub(target, above);
      const unsigned ballot = __ballot_sync(kFullWarp, !less(suffix, need));
      if (ballot == 0) {
        // Unreachable when the precondition holds; keep everything in the bucket range.
        if (lane == 0) {
          sh.sel = 0;
          sh.above = above;
          sh.done = 1;
        }
      } else if (lane == 31 - __clz(static_cast<int>(ballot))) {
        U128 acc = sub(suffix, s);
        int sel = b_lo;
        for (int b = b_hi - 1; b >= b_lo; --b) {
          const U128 with = add(acc, bin_value<kWeighted>(sh, b));
          if (!less(with, need)) {
            sel = b;
            break;
          }
          acc = with;
        }
        sh.sel = sel;
        sh.above = add(above, acc);
        // Done when the whole bucket is the answer: its candidates exactly complete the count, or it
        // holds a single candidate.
        if constexpr (kWeighted) {
          sh.done = sh.cnt[sel] == 1 ? 1 : 0;
        } else {
          sh.done = equal(add(acc, bin_value<kWeighted>(sh, sel)), need) ? 1 : 0;
        }
      }
    }
    __syncthreads();
    prefix |= static_cast<u64>(sh.sel) << shift;
    above = sh.above;
    const bool done = sh.done != 0 || level == n_levels - 1;
    __syncthreads();
    if (done) break;
  }
  return prefix > lower ? prefix : lower;
}

// Sum of the fixed-point weights of the candidates with key >= lower, and the largest such id.
__device__ U128 kept_mass(const float* lg, int vocab, bool vec4, u64 lower, const Weigher& wgt, SampleShared& sh,
                          int& last_id) {
  U128 s{0, 0};
  int last = -1;
  for_each_logit(lg, vocab, vec4, [&](int i, float l) {
    if (!is_candidate(l) || order_key(l, i, vocab) < lower) return;
    s = add(s, wgt.fixed(l));
    last = i > last ? i : last;
  });
  last_id = block_max(last, sh);
  return block_sum(s, sh);
}

__global__ void __launch_bounds__(kSampleThreads)
    sample_kernel(const float* __restrict__ logits, int vocab, const DeviceSampleRow* __restrict__ params,
                  std::int32_t* __restrict__ out, bool vec4) {
  __shared__ SampleShared sh;
  const long long row = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  const float* lg = logits + row * vocab;
  const DeviceSampleRow p = params[row];

  // chunkwise::validate: the host throws; the device answers -1.
  const bool valid = isfinite(p.temperature) && p.temperature >= 0.0f && p.top_k >= 0 && p.top_p > 0.0f &&
                     p.top_p <= 1.0f;
  if (!valid) {
    if (tid == 0) out[row] = -1;
    return;
  }

  // Pass 1: the argmax (the host's argmax(): NaN never wins, ties to the lowest id, 0 when nothing
  // beats -inf), which is also max_logit, and the number of candidates.
  Best best{-INFINITY, -1};
  int n_cand = 0;
  for_each_logit(lg, vocab, vec4, [&](int i, float l) {
    if (!is_candidate(l)) return;
    ++n_cand;
    best = better(best, Best{l, i});
  });
  best = block_best(best, sh);
  n_cand = block_sum(n_cand, sh);
  const float inv_t = __fdiv_rn(1.0f, p.temperature);
  if (p.temperature == 0.0f || p.top_k == 1 || n_cand == 0 || best.v == INFINITY || isinf(inv_t)) {
    if (tid == 0) out[row] = best.i < 0 ? 0 : best.i;
    return;
  }
  const Weigher wgt{best.v, inv_t};

  // The kept set is {candidates with key >= lower}.
  u64 lower = 0;
  if (p.top_k > 0 && p.top_k < n_cand) {
    lower = radix_select<false>(lg, vocab, vec4, lower, u128(static_cast<u64>(p.top_k)), wgt, sh);
  }
  int last_id = -1;
  if (p.top_p < 1.0f) {
    const U128 total = kept_mass(lg, vocab, vec4, lower, wgt, sh, last_id);
    // target = ceil(top_p * total), exactly: top_p = m * 2^e with e <= -24.
    const u32 pb = __float_as_uint(p.top_p);
    u64 m = pb & 0x7fffffu;
    int e = -149;
    if (((pb >> 23) & 0xffu) != 0) {
      m |= 0x800000u;
      e = static_cast<int>((pb >> 23) & 0xffu) - 150;
    }
    const U128 target = mul_shift(total, m, -e, true);
    lower = radix_select<true>(lg, vocab, vec4, lower, target, wgt, sh);
  }
  const U128 mass = kept_mass(lg, vocab, vec4, lower, wgt, sh, last_id);

  // u = uniform(seed, step) * mass, uniform = (bits >> 11) * 2^-53. The token is the first kept
  // candidate in id order whose inclusive cumulative weight exceeds u; with integer cumulative
  // weights, cum > u  <=>  cum > floor(u).
  const u64 bits = chunkwise::detail::sample_bits(p.seed, p.step);  // the host's draw
  const U128 u = mul_shift(mass, bits >> 11, 53, false);
  U128 carry{0, 0};
  for (int base = 0; base < vocab; base += kTile) {
    const int i0 = base + 4 * tid;
    float l[4];
    if (vec4 && i0 < vocab) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(lg + i0));
      l[0] = v.x, l[1] = v.y, l[2] = v.z, l[3] = v.w;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) l[j] = i0 + j < vocab ? __ldg(lg + i0 + j) : -INFINITY;
    }
    U128 q[4];
    U128 s{0, 0};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const bool kept = is_candidate(l[j]) && order_key(l[j], i0 + j, vocab) >= lower;
      q[j] = kept ? wgt.fixed(l[j]) : U128{0, 0};
      s = add(s, q[j]);
    }
    U128 tile_total;
    U128 cum = add(carry, block_exclusive_scan(s, tile_total, sh));
    if (!less(u, cum)) {  // cum <= u: the crossing is at or after this thread's first element
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        cum = add(cum, q[j]);
        if (less(u, cum)) {
          out[row] = i0 + j;
          break;
        }
      }
    }
    carry = add(carry, tile_total);
    if (less(u, carry)) return;  // found; the same decision in every thread
  }
  // The host returns its last kept candidate when rounding leaves u at the top of the range; exact
  // sums never get here.
  if (tid == 0) out[row] = last_id;
}

__global__ void sampling_expf_kernel(const float* __restrict__ x, long long n, float* __restrict__ y) {
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    y[i] = glibc_expf(x[i]);
}

}  // namespace

// ---- host launchers ---------------------------------------------------------------------------

std::size_t sample_workspace_bytes(std::int64_t /*rows*/, int /*vocab*/) { return 0; }

void sample_tokens(const float* logits, std::int64_t rows, int vocab, const DeviceSampleRow* params,
                   std::int32_t* out_tokens, void* /*workspace*/, std::size_t workspace_bytes, cudaStream_t stream) {
  check(rows >= 0 && rows <= 0x7fffffff, ErrorCode::kInvalidArgument,
        "sample_tokens: rows must be in [0, 2^31), got " + std::to_string(rows));
  check(vocab > 0 && vocab <= (1 << 30), ErrorCode::kInvalidArgument,
        "sample_tokens: vocab must be in [1, 2^30], got " + std::to_string(vocab));
  check(workspace_bytes >= sample_workspace_bytes(rows, vocab), ErrorCode::kInvalidArgument,
        "sample_tokens: workspace too small");
  if (rows == 0) return;
  check(logits != nullptr && params != nullptr && out_tokens != nullptr, ErrorCode::kInvalidArgument,
        "sample_tokens: null pointer");
  const bool vec4 = vocab % 4 == 0 && reinterpret_cast<std::uintptr_t>(logits) % 16 == 0;
  sample_kernel<<<static_cast<unsigned>(rows), kSampleThreads, 0, stream>>>(logits, vocab, params, out_tokens, vec4);
  check_launch("sample_tokens");
}

void sampling_expf(const float* x, std::int64_t n, float* y, cudaStream_t stream) {
  check(n >= 0, ErrorCode::kInvalidArgument, "sampling_expf: negative size");
  if (n == 0) return;
  const long long blocks = (n + 255) / 256;
  sampling_expf_kernel<<<static_cast<unsigned>(blocks < 65536 ? blocks : 65536), 256, 0, stream>>>(x, n, y);
  check_launch("sampling_expf");
}

}  // namespace chunkwise::cuda
