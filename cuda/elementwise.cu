// Element-wise and row-wise kernels of the CUDA backend: embedding lookup, fused residual add +
// RMSNorm, RoPE with the paged KV-cache write, SwiGLU, row gather, the paged KV gather to fp32 (the
// sparse-attention probe), conversions, and chunk reuse (the check layer's key deviation, chunk KV
// placement with re-rotation and its gather). All memory-bound:
// one pass over the data, 16-byte vectors (8 bf16 or fp16 / 2x4 floats) where the row length is a
// multiple of 8 and the pointers are 16-byte aligned, a scalar path otherwise; fp32 arithmetic
// throughout, but for the double sums and rotations of chunk reuse. Templates over the storage type
// T (bf16, f16), instantiated at the end.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/common.hpp"
#include "chunkwise/cuda/ops.hpp"
#include "storage.cuh"

namespace chunkwise::cuda {

// ---- device code ------------------------------------------------------------------------------
namespace {

using i64 = std::int64_t;
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ i64 global_thread() {
  return static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ i64 global_stride() { return static_cast<i64>(gridDim.x) * blockDim.x; }

// V consecutive floats from p (V = 8: two 16-byte loads; p 16-byte aligned).
template <int V>
__device__ __forceinline__ void load_f32(const float* p, float (&f)[V]) {
  if constexpr (V == 8) {
    const float4 a = *reinterpret_cast<const float4*>(p);
    const float4 b = *reinterpret_cast<const float4*>(p + 4);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) f[e] = p[e];
  }
}

template <int V>
__device__ __forceinline__ void store_f32(float* p, const float (&f)[V]) {
  if constexpr (V == 8) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) p[e] = f[e];
  }
}

// V consecutive storage elements from p as floats (V = 8: one 16-byte load).
template <int V, class T>
__device__ __forceinline__ void load_t(const T* p, float (&f)[V]) {
  if constexpr (V == 8) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 t = unpack2<T>(w[k]);
      f[2 * k] = t.x;
      f[2 * k + 1] = t.y;
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) f[e] = to_float(p[e]);
  }
}

template <int V, class T>
__device__ __forceinline__ void store_t(T* p, const float (&f)[V]) {
  if constexpr (V == 8) {
    unsigned w[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) w[k] = pack2<T>(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) p[e] = from_float<T>(f[e]);
  }
}

// To fp32 or to a storage type.
template <int V, class OutT>
__device__ __forceinline__ void store_out(OutT* p, const float (&f)[V]) {
  if constexpr (std::is_same_v<OutT, float>) {
    store_f32<V>(p, f);
  } else {
    store_t<V>(p, f);
  }
}

// ---- embedding ----

template <int V, class T>
__global__ void embed_kernel(const T* __restrict__ table, i64 vocab, i64 dim,
                             const std::int32_t* __restrict__ ids, i64 n, float* __restrict__ out,
                             int* bad_id_flag) {
  const i64 vpr = dim / V;
  const i64 total = n * vpr;
  for (i64 t = global_thread(); t < total; t += global_stride()) {
    const i64 r = t / vpr;
    const i64 c = (t - r * vpr) * V;
    const std::int32_t id = ids[r];
    float f[V];
    if (id < 0 || id >= vocab) {
#pragma unroll
      for (int e = 0; e < V; ++e) f[e] = 0.0f;
      if (bad_id_flag != nullptr && c == 0) *bad_id_flag = 1;
    } else {
      load_t<V>(table + static_cast<i64>(id) * dim + c, f);
    }
    store_f32<V>(out + r * dim + c, f);
  }
}

// ---- RMSNorm ----

// Sum over the block; every thread gets the total. blockDim.x is a multiple of 32, at most 1024.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int n_warps = static_cast<int>(blockDim.x) >> 5;
  if (n_warps == 1) return v;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  float t = lane < n_warps ? warp_sums[lane] : 0.0f;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(kFullMask, t, o);
  return t;
}

// One CTA per row; each thread keeps its VPT vectors of V elements in registers, so x is read once.
// Needs dim % V == 0 and dim / V <= VPT * blockDim.x.
template <int V, int VPT, class T, class OutT>
__global__ void rms_norm_kernel(float* __restrict__ x, const float* residual, const T* __restrict__ weight,
                                i64 dim, float eps, OutT* __restrict__ y) {
  const i64 row = blockIdx.x;
  float* xr = x + row * dim;
  const float* rr = residual != nullptr ? residual + row * dim : nullptr;
  OutT* yr = y + row * dim;
  const int nvec = static_cast<int>(dim / V);
  float v[VPT][V];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int k = static_cast<int>(threadIdx.x) + j * static_cast<int>(blockDim.x);
    if (k < nvec) {
      load_f32<V>(xr + static_cast<i64>(k) * V, v[j]);
      if (rr != nullptr) {
        float r[V];
        load_f32<V>(rr + static_cast<i64>(k) * V, r);
#pragma unroll
        for (int e = 0; e < V; ++e) v[j][e] += r[e];
        store_f32<V>(xr + static_cast<i64>(k) * V, v[j]);
      }
#pragma unroll
      for (int e = 0; e < V; ++e) ss = __fmaf_rn(v[j][e], v[j][e], ss);
    }
  }
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
#pragma unroll
  for (int j = 0; j < VPT; ++j) {
    const int k = static_cast<int>(threadIdx.x) + j * static_cast<int>(blockDim.x);
    if (k < nvec) {
      float w[V];
      load_t<V>(weight + static_cast<i64>(k) * V, w);
      float o[V];
      // Same rounding order as the CPU reference (and HF): weight * (x * inv).
#pragma unroll
      for (int e = 0; e < V; ++e) o[e] = __fmul_rn(w[e], __fmul_rn(v[j][e], inv));
      store_out<V>(yr + static_cast<i64>(k) * V, o);
    }
  }
}

// Any dim: two passes over the row (the second from L1/L2).
template <class T, class OutT>
__global__ void rms_norm_generic_kernel(float* __restrict__ x, const float* residual,
                                        const T* __restrict__ weight, i64 dim, float eps,
                                        OutT* __restrict__ y) {
  const i64 row = blockIdx.x;
  float* xr = x + row * dim;
  const float* rr = residual != nullptr ? residual + row * dim : nullptr;
  OutT* yr = y + row * dim;
  float ss = 0.0f;
  for (i64 i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = xr[i];
    if (rr != nullptr) {
      v += rr[i];
      xr[i] = v;
    }
    ss = __fmaf_rn(v, v, ss);
  }
  ss = block_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);
  for (i64 i = threadIdx.x; i < dim; i += blockDim.x) {
    const float o[1] = {__fmul_rn(to_float(weight[i]), __fmul_rn(xr[i], inv))};
    store_out<1>(yr + i, o);
  }
}

// ---- RoPE + KV write ----

constexpr int kMaxHalfHeadDim = 256;

// cos and sin of position * inv_freq[i], i < half, into shared memory (the caller syncs). HF:
// freqs = inv_freq.float() @ position.float(): one fp32 product, then fp32 cos and sin.
__device__ __forceinline__ void rope_angles(std::int32_t position, const float* __restrict__ inv_freq,
                                            int half, float* cos_s, float* sin_s) {
  const auto pos = static_cast<float>(position);
  for (int i = static_cast<int>(threadIdx.x); i < half; i += static_cast<int>(blockDim.x)) {
    float s, c;
    sincosf(__fmul_rn(inv_freq[i], pos), &s, &c);
    cos_s[i] = c;
    sin_s[i] = s;
  }
}

// x * cos + rotate_half(x) * sin on the pair (x1, x2) = (x[i], x[i + half]), rotate_half(x) = cat(-x2, x1).
__device__ __forceinline__ void rope_pair(float& x1, float& x2, float c, float s) {
  const float a = x1, b = x2;
  x1 = a * c - b * s;
  x2 = b * c + a * s;
}

// One CTA per row: cos/sin of the row's position once in shared memory, then every (head, chunk of
// V pair indices) of q, k and v: q and k rotated, q to q_out, k and v to the cache slot.
template <int V, class T>
__global__ void rope_write_kv_kernel(const float* __restrict__ qkv, int n_heads, int n_kv_heads, int head_dim,
                                     const std::int32_t* __restrict__ positions,
                                     const float* __restrict__ inv_freq, const i64* __restrict__ slots,
                                     T* __restrict__ q_out, T* __restrict__ k_cache,
                                     T* __restrict__ v_cache) {
  __shared__ float cos_s[kMaxHalfHeadDim];
  __shared__ float sin_s[kMaxHalfHeadDim];
  const i64 r = blockIdx.x;
  const int half = head_dim / 2;
  rope_angles(positions[r], inv_freq, half, cos_s, sin_s);
  __syncthreads();
  const int heads = n_heads + 2 * n_kv_heads;
  const int chunks = half / V;
  const float* row = qkv + r * heads * head_dim;
  const i64 slot = slots[r];
  const i64 kv_dim = static_cast<i64>(n_kv_heads) * head_dim;
  for (int u = static_cast<int>(threadIdx.x); u < heads * chunks; u += static_cast<int>(blockDim.x)) {
    const int h = u / chunks;
    const int i = (u - h * chunks) * V;
    T* dst;
    if (h < n_heads) {
      dst = q_out + (r * n_heads + h) * head_dim;
    } else {
      if (slot < 0) continue;
      dst = h < n_heads + n_kv_heads ? k_cache + slot * kv_dim + static_cast<i64>(h - n_heads) * head_dim
                                     : v_cache + slot * kv_dim + static_cast<i64>(h - n_heads - n_kv_heads) * head_dim;
    }
    const float* src = row + static_cast<i64>(h) * head_dim;
    float a[V], b[V];
    load_f32<V>(src + i, a);
    load_f32<V>(src + half + i, b);
    if (h < n_heads + n_kv_heads) {
#pragma unroll
      for (int e = 0; e < V; ++e) rope_pair(a[e], b[e], cos_s[i + e], sin_s[i + e]);
    }
    store_t<V>(dst + i, a);
    store_t<V>(dst + half + i, b);
  }
}

// ---- chunk reuse ----

// One CTA per row: the row's keys roped as in rope_write_kv_kernel, compared with the cache's.
template <class T>
__global__ void key_deviation_kernel(const float* __restrict__ qkv, int n_heads, int n_kv_heads, int head_dim,
                                     const std::int32_t* __restrict__ positions,
                                     const float* __restrict__ inv_freq, const i64* __restrict__ slots,
                                     const T* __restrict__ k_cache, float* __restrict__ deviation) {
  __shared__ float cos_s[kMaxHalfHeadDim];
  __shared__ float sin_s[kMaxHalfHeadDim];
  __shared__ double warp_sums[32];
  const i64 r = blockIdx.x;
  const int half = head_dim / 2;
  rope_angles(positions[r], inv_freq, half, cos_s, sin_s);
  __syncthreads();
  const i64 slot = slots[r];
  double sum = 0.0;
  if (slot >= 0) {
    const float* k = qkv + (r * (n_heads + 2 * n_kv_heads) + n_heads) * head_dim;
    const T* old = k_cache + slot * n_kv_heads * head_dim;
    for (int u = static_cast<int>(threadIdx.x); u < n_kv_heads * half; u += static_cast<int>(blockDim.x)) {
      const int h = u / half;
      const int a = h * head_dim + (u - h * half);
      float x1 = k[a], x2 = k[a + half];
      rope_pair(x1, x2, cos_s[u - h * half], sin_s[u - h * half]);
      const double e1 = static_cast<double>(x1) - to_float(old[a]);
      const double e2 = static_cast<double>(x2) - to_float(old[a + half]);
      sum += e1 * e1 + e2 * e2;
    }
  }
  for (int x = 16; x > 0; x >>= 1) sum += __shfl_xor_sync(kFullMask, sum, x);
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  if ((threadIdx.x & 31) == 0) warp_sums[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x) >> 5; ++w) total += warp_sums[w];
    deviation[r] = static_cast<float>(total);
  }
}

// One CTA per (token, layer): the token's chunk found by binary search over the placements (few),
// its K and V rows staged in shared memory with 16-byte loads (the source may sit across the host
// link, where wide, coalesced reads decide the bandwidth), its keys rotated pair by pair in double.
template <class S>
__device__ void stage_row(const S* __restrict__ src, i64 n, S* __restrict__ dst) {
  const bool vector = (reinterpret_cast<std::uintptr_t>(src) & 15) == 0 && (n * sizeof(S)) % 16 == 0;
  if (vector) {
    const auto* s4 = reinterpret_cast<const uint4*>(src);
    auto* d4 = reinterpret_cast<uint4*>(dst);
    for (i64 e = threadIdx.x; e < static_cast<i64>(n * sizeof(S) / 16); e += blockDim.x) d4[e] = s4[e];
  } else {
    for (i64 e = threadIdx.x; e < n; e += blockDim.x) dst[e] = src[e];
  }
}

template <class S, class T>
__global__ void place_chunk_kv_kernel(const ChunkPlacement* __restrict__ chunks, int n_chunks, int n_kv_heads,
                                      int head_dim, const double* __restrict__ rotations,
                                      const i64* __restrict__ slots, T* __restrict__ cache, i64 layer_elems,
                                      int first_layer) {
  extern __shared__ uint4 place_smem[];  // K row then V row, kv_dim of S each
  const auto i = static_cast<std::int32_t>(blockIdx.x);
  const i64 l = first_layer + static_cast<i64>(blockIdx.y);
  int lo = 0, hi = n_chunks - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (chunks[mid].first <= i)
      lo = mid;
    else
      hi = mid - 1;
  }
  const ChunkPlacement& c = chunks[lo];
  const i64 n_tokens = c.n_tokens;
  const int half = head_dim / 2;
  const i64 kv_dim = static_cast<i64>(n_kv_heads) * head_dim;
  S* k = reinterpret_cast<S*>(place_smem);
  S* v = k + kv_dim;
  const S* k_src = static_cast<const S*>(c.src) + (2 * l * n_tokens + (i - c.first)) * kv_dim;
  stage_row(k_src, kv_dim, k);
  stage_row(k_src + n_tokens * kv_dim, kv_dim, v);
  __syncthreads();
  const double* rotation = c.rotation >= 0 ? rotations + c.rotation : nullptr;
  T* kc = cache + 2 * l * layer_elems + slots[i] * kv_dim;
  T* vc = kc + layer_elems;
  for (int u = static_cast<int>(threadIdx.x); u < n_kv_heads * half; u += static_cast<int>(blockDim.x)) {
    const int h = u / half;
    const int j = u - h * half;
    const int a = h * head_dim + j;
    float y1 = to_float(k[a]), y2 = to_float(k[a + half]);
    if (rotation != nullptr) {
      const double x1 = y1, x2 = y2, cs = rotation[j], sn = rotation[half + j];
      y1 = static_cast<float>(x1 * cs - x2 * sn);
      y2 = static_cast<float>(x2 * cs + x1 * sn);
    }
    kc[a] = from_float<T>(y1);
    kc[a + half] = from_float<T>(y2);
  }
  for (i64 e = threadIdx.x; e < kv_dim; e += blockDim.x) vc[e] = from_float<T>(to_float(v[e]));
}

// Element t of the output ([layers][K|V][n_tokens, kv_dim]) from its cache slot.
template <class T>
__global__ void gather_chunk_kv_kernel(const T* __restrict__ cache, i64 total, i64 layer_elems, i64 n_tokens,
                                       i64 kv_dim, const i64* __restrict__ slots, float* __restrict__ out) {
  for (i64 t = global_thread(); t < total; t += global_stride()) {
    const i64 row = t / kv_dim;  // (2 * layer + K|V) * n_tokens + token
    const i64 lw = row / n_tokens;
    out[t] = to_float(cache[lw * layer_elems + slots[row - lw * n_tokens] * kv_dim + (t - row * kv_dim)]);
  }
}

// ---- SwiGLU ----

template <int V, class T>
__global__ void swiglu_kernel(const float* __restrict__ gate_up, i64 rows, i64 ffn, T* __restrict__ out) {
  const i64 vpr = ffn / V;
  const i64 total = rows * vpr;
  for (i64 t = global_thread(); t < total; t += global_stride()) {
    const i64 r = t / vpr;
    const i64 c = (t - r * vpr) * V;
    const float* g = gate_up + r * 2 * ffn + c;
    float gv[V], uv[V], o[V];
    load_f32<V>(g, gv);
    load_f32<V>(g + ffn, uv);
#pragma unroll
    for (int e = 0; e < V; ++e) o[e] = gv[e] / (1.0f + expf(-gv[e])) * uv[e];
    store_t<V>(out + r * ffn + c, o);
  }
}

// ---- gather and conversions ----

// V elements of T are one 16-byte vector when V * sizeof(T) == 16, else V == 1.
template <int V, class T>
__global__ void gather_rows_kernel(const T* __restrict__ x, i64 dim, const std::int32_t* __restrict__ rows,
                                   i64 n, T* __restrict__ out) {
  const i64 vpr = dim / V;
  const i64 total = n * vpr;
  for (i64 t = global_thread(); t < total; t += global_stride()) {
    const i64 i = t / vpr;
    const i64 c = (t - i * vpr) * V;
    const std::int32_t src_row = rows[i];
    T* dst = out + i * dim + c;
    if (src_row < 0) {
#pragma unroll
      for (int e = 0; e < V; ++e) dst[e] = from_float<T>(0.0f);
      continue;
    }
    const T* src = x + static_cast<i64>(src_row) * dim + c;
    if constexpr (V * sizeof(T) == 16) {
      *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) dst[e] = src[e];
    }
  }
}

template <int V, class T>
__global__ void gather_paged_f32_kernel(const T* __restrict__ cache, int block_size, i64 kv_dim,
                                        const std::int32_t* __restrict__ pages, i64 n, float* __restrict__ out) {
  const i64 vpr = kv_dim / V;
  const i64 total = n * vpr;
  for (i64 t = global_thread(); t < total; t += global_stride()) {
    const i64 p = t / vpr;
    const i64 c = (t - p * vpr) * V;
    const i64 blk = p / block_size;
    const i64 slot = static_cast<i64>(pages[blk]) * block_size + (p - blk * block_size);
    float f[V];
    load_t<V>(cache + slot * kv_dim + c, f);
    store_f32<V>(out + p * kv_dim + c, f);
  }
}

// Elements [0, n/V*V) in vectors of V, the tail one by one.
template <int V, class T>
__global__ void from_f32_kernel(const float* __restrict__ x, i64 n, T* __restrict__ y) {
  const i64 nv = n / V;
  for (i64 t = global_thread(); t < nv; t += global_stride()) {
    float f[V];
    load_f32<V>(x + t * V, f);
    store_t<V>(y + t * V, f);
  }
  for (i64 i = nv * V + global_thread(); i < n; i += global_stride()) y[i] = from_float<T>(x[i]);
}

template <int V, class T>
__global__ void to_f32_kernel(const T* __restrict__ x, i64 n, float* __restrict__ y) {
  const i64 nv = n / V;
  for (i64 t = global_thread(); t < nv; t += global_stride()) {
    float f[V];
    load_t<V>(x + t * V, f);
    store_f32<V>(y + t * V, f);
  }
  for (i64 i = nv * V + global_thread(); i < n; i += global_stride()) y[i] = to_float(x[i]);
}

}  // namespace

// ---- host launchers ---------------------------------------------------------------------------
namespace {

constexpr int kThreads = 256;

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Blocks for a grid-stride loop over `work` items.
unsigned grid_for(i64 work) {
  const i64 blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<i64>(blocks, 1, i64{1} << 16));
}

void require(bool cond, const char* op, const std::string& what) {
  if (!cond) throw Error(ErrorCode::kInvalidArgument, std::string(op) + ": " + what);
}

template <class T, class OutT>
void launch_rms_norm(const char* name, float* x, const float* residual, const T* weight, i64 rows, i64 dim,
                     float eps, OutT* y, cudaStream_t stream) {
  require(rows >= 0 && dim > 0, name, "need rows >= 0 and dim > 0, got rows " + std::to_string(rows) + ", dim " +
                                          std::to_string(dim));
  require(x != nullptr && weight != nullptr && y != nullptr, name, "null pointer");
  if (rows == 0) return;
  require(rows <= 0x7fffffff, name, "too many rows");
  const bool vec = dim % 8 == 0 && aligned16(x) && aligned16(weight) && aligned16(y) &&
                   (residual == nullptr || aligned16(residual));
  auto threads_for = [](i64 nvec, int vpt) {
    const i64 t = (nvec + vpt - 1) / vpt;
    return static_cast<int>(std::clamp<i64>((t + 31) / 32 * 32, 32, 1024));
  };
  const auto grid = static_cast<unsigned>(rows);
  if (vec && dim / 8 <= 4 * 1024) {
    rms_norm_kernel<8, 4, T, OutT>
        <<<grid, threads_for(dim / 8, 4), 0, stream>>>(x, residual, weight, dim, eps, y);
  } else if (dim <= 16 * 1024) {
    rms_norm_kernel<1, 16, T, OutT>
        <<<grid, threads_for(dim, 16), 0, stream>>>(x, residual, weight, dim, eps, y);
  } else {
    rms_norm_generic_kernel<T, OutT><<<grid, 1024, 0, stream>>>(x, residual, weight, dim, eps, y);
  }
  check_launch(name);
}

}  // namespace

template <class T>
void embed(const T* table, std::int64_t vocab, std::int64_t dim, const std::int32_t* ids, std::int64_t n,
           float* out, int* bad_id_flag, cudaStream_t stream) {
  require(vocab >= 0 && dim >= 0 && n >= 0, "embed", "negative size");
  if (n == 0 || dim == 0) return;
  require(table != nullptr && ids != nullptr && out != nullptr, "embed", "null pointer");
  if (dim % 8 == 0 && aligned16(table) && aligned16(out)) {
    embed_kernel<8><<<grid_for(n * dim / 8), kThreads, 0, stream>>>(table, vocab, dim, ids, n, out, bad_id_flag);
  } else {
    embed_kernel<1><<<grid_for(n * dim), kThreads, 0, stream>>>(table, vocab, dim, ids, n, out, bad_id_flag);
  }
  check_launch("embed");
}

template <class T>
void add_rms_norm(float* x, const float* residual, const T* weight, std::int64_t rows, std::int64_t dim,
                  float eps, T* y, cudaStream_t stream) {
  launch_rms_norm("add_rms_norm", x, residual, weight, rows, dim, eps, y, stream);
}

template <class T>
void rms_norm_f32(float* x, const float* residual, const T* weight, std::int64_t rows, std::int64_t dim,
                  float eps, float* y, cudaStream_t stream) {
  launch_rms_norm("rms_norm_f32", x, residual, weight, rows, dim, eps, y, stream);
}

template <class T>
void rope_write_kv(const float* qkv, std::int64_t rows, int n_heads, int n_kv_heads, int head_dim,
                   const std::int32_t* positions, const float* inv_freq, const std::int64_t* slots, T* q_out,
                   T* k_cache, T* v_cache, int block_size, cudaStream_t stream) {
  require(rows >= 0 && n_heads > 0 && n_kv_heads > 0 && block_size > 0, "rope_write_kv",
          "need rows >= 0 and positive n_heads, n_kv_heads and block_size");
  require(head_dim > 0 && head_dim % 2 == 0 && head_dim / 2 <= kMaxHalfHeadDim, "rope_write_kv",
          "head_dim must be even and at most " + std::to_string(2 * kMaxHalfHeadDim) + ", got " +
              std::to_string(head_dim));
  if (rows == 0) return;
  require(rows <= 0x7fffffff, "rope_write_kv", "too many rows");
  require(qkv != nullptr && positions != nullptr && inv_freq != nullptr && slots != nullptr && q_out != nullptr &&
              k_cache != nullptr && v_cache != nullptr,
          "rope_write_kv", "null pointer");
  const int half = head_dim / 2;
  const int heads = n_heads + 2 * n_kv_heads;
  const bool vec = half % 8 == 0 && aligned16(qkv) && aligned16(q_out) && aligned16(k_cache) && aligned16(v_cache);
  const int units = heads * (vec ? half / 8 : half);
  const int threads = std::clamp((units + 31) / 32 * 32, 32, 256);
  const auto grid = static_cast<unsigned>(rows);
  if (vec) {
    rope_write_kv_kernel<8><<<grid, threads, 0, stream>>>(qkv, n_heads, n_kv_heads, head_dim, positions, inv_freq,
                                                          slots, q_out, k_cache, v_cache);
  } else {
    rope_write_kv_kernel<1><<<grid, threads, 0, stream>>>(qkv, n_heads, n_kv_heads, head_dim, positions, inv_freq,
                                                          slots, q_out, k_cache, v_cache);
  }
  check_launch("rope_write_kv");
}

template <class T>
void key_deviation(const float* qkv, std::int64_t rows, int n_heads, int n_kv_heads, int head_dim,
                   const std::int32_t* positions, const float* inv_freq, const std::int64_t* slots,
                   const T* k_cache, float* deviation, cudaStream_t stream) {
  require(rows >= 0 && n_heads > 0 && n_kv_heads > 0, "key_deviation",
          "need rows >= 0 and positive n_heads and n_kv_heads");
  require(head_dim > 0 && head_dim % 2 == 0 && head_dim / 2 <= kMaxHalfHeadDim, "key_deviation",
          "head_dim must be even and at most " + std::to_string(2 * kMaxHalfHeadDim));
  if (rows == 0) return;
  require(rows <= 0x7fffffff, "key_deviation", "too many rows");
  require(qkv != nullptr && positions != nullptr && inv_freq != nullptr && slots != nullptr &&
              k_cache != nullptr && deviation != nullptr,
          "key_deviation", "null pointer");
  const int threads = std::clamp((n_kv_heads * head_dim / 2 + 31) / 32 * 32, 32, 256);
  key_deviation_kernel<<<static_cast<unsigned>(rows), threads, 0, stream>>>(
      qkv, n_heads, n_kv_heads, head_dim, positions, inv_freq, slots, k_cache, deviation);
  check_launch("key_deviation");
}

template <class S, class T>
void place_chunk_kv(const ChunkPlacement* chunks, int n_chunks, std::int64_t n_tokens, int first_layer, int layers,
                    int n_kv_heads, int head_dim, const double* rotations, const std::int64_t* slots, T* cache,
                    std::int64_t layer_elems, cudaStream_t stream) {
  require(n_chunks >= 0 && first_layer >= 0 && layers >= 0 && n_tokens >= 0 && n_kv_heads > 0 && head_dim > 0 &&
              head_dim % 2 == 0,
          "place_chunk_kv",
          "need n_chunks, first_layer, layers, n_tokens >= 0, n_kv_heads > 0 and an even head_dim > 0");
  require(layer_elems >= static_cast<i64>(n_kv_heads) * head_dim, "place_chunk_kv",
          "a cache layer is smaller than one token");
  if (layers == 0 || n_tokens == 0) return;
  require(n_chunks > 0, "place_chunk_kv", "tokens without placements");
  require(first_layer + static_cast<i64>(layers) <= 65535 && n_tokens <= 0x7fffffff, "place_chunk_kv",
          "too many layers or tokens");
  require(chunks != nullptr && slots != nullptr && cache != nullptr, "place_chunk_kv", "null pointer");
  const int threads = std::clamp((n_kv_heads * head_dim / 2 + 31) / 32 * 32, 32, 256);
  const dim3 grid(static_cast<unsigned>(n_tokens), static_cast<unsigned>(layers));
  const std::size_t smem = 2 * static_cast<std::size_t>(n_kv_heads) * head_dim * sizeof(S);
  require(smem <= 48 * 1024, "place_chunk_kv", "a token's K and V rows exceed 48 KiB of shared memory");
  place_chunk_kv_kernel<S><<<grid, threads, smem, stream>>>(chunks, n_chunks, n_kv_heads, head_dim, rotations,
                                                            slots, cache, layer_elems, first_layer);
  check_launch("place_chunk_kv");
}

template <class T>
void gather_chunk_kv(const T* cache, int layers, std::int64_t layer_elems, std::int64_t n_tokens, int kv_dim,
                     const std::int64_t* slots, float* out, cudaStream_t stream) {
  require(layers >= 0 && n_tokens >= 0 && kv_dim > 0 && layer_elems >= kv_dim, "gather_chunk_kv",
          "need layers, n_tokens >= 0 and 0 < kv_dim <= layer_elems");
  if (layers == 0 || n_tokens == 0) return;
  require(cache != nullptr && slots != nullptr && out != nullptr, "gather_chunk_kv", "null pointer");
  const i64 total = 2 * static_cast<i64>(layers) * n_tokens * kv_dim;
  gather_chunk_kv_kernel<<<grid_for(total), kThreads, 0, stream>>>(cache, total, layer_elems, n_tokens,
                                                                   kv_dim, slots, out);
  check_launch("gather_chunk_kv");
}

template <class T>
void swiglu(const float* gate_up, std::int64_t rows, std::int64_t ffn, T* out, cudaStream_t stream) {
  require(rows >= 0 && ffn >= 0, "swiglu", "negative size");
  if (rows == 0 || ffn == 0) return;
  require(gate_up != nullptr && out != nullptr, "swiglu", "null pointer");
  if (ffn % 8 == 0 && aligned16(gate_up) && aligned16(out)) {
    swiglu_kernel<8><<<grid_for(rows * ffn / 8), kThreads, 0, stream>>>(gate_up, rows, ffn, out);
  } else {
    swiglu_kernel<1><<<grid_for(rows * ffn), kThreads, 0, stream>>>(gate_up, rows, ffn, out);
  }
  check_launch("swiglu");
}

template <class T>
void gather_rows(const T* x, std::int64_t dim, const std::int32_t* rows, std::int64_t n, T* out,
                 cudaStream_t stream) {
  require(dim >= 0 && n >= 0, "gather_rows", "negative size");
  if (n == 0 || dim == 0) return;
  require(x != nullptr && rows != nullptr && out != nullptr, "gather_rows", "null pointer");
  constexpr int kVec = 16 / sizeof(T);
  if (dim % kVec == 0 && aligned16(x) && aligned16(out)) {
    gather_rows_kernel<kVec><<<grid_for(n * dim / kVec), kThreads, 0, stream>>>(x, dim, rows, n, out);
  } else {
    gather_rows_kernel<1><<<grid_for(n * dim), kThreads, 0, stream>>>(x, dim, rows, n, out);
  }
  check_launch("gather_rows");
}

template <class T>
void convert(const float* x, std::int64_t n, T* y, cudaStream_t stream) {
  require(n >= 0, "convert", "negative size");
  if (n == 0) return;
  require(x != nullptr && y != nullptr, "convert", "null pointer");
  if (aligned16(x) && aligned16(y)) {
    from_f32_kernel<8><<<grid_for(n / 8 + 1), kThreads, 0, stream>>>(x, n, y);
  } else {
    from_f32_kernel<1><<<grid_for(n), kThreads, 0, stream>>>(x, n, y);
  }
  check_launch("convert to 16-bit");
}

template <class T>
void convert(const T* x, std::int64_t n, float* y, cudaStream_t stream) {
  require(n >= 0, "convert", "negative size");
  if (n == 0) return;
  require(x != nullptr && y != nullptr, "convert", "null pointer");
  if (aligned16(x) && aligned16(y)) {
    to_f32_kernel<8><<<grid_for(n / 8 + 1), kThreads, 0, stream>>>(x, n, y);
  } else {
    to_f32_kernel<1><<<grid_for(n), kThreads, 0, stream>>>(x, n, y);
  }
  check_launch("convert to fp32");
}

template <class T>
void gather_paged_f32(const T* cache, int block_size, int n_kv_heads, int head_dim, const std::int32_t* pages,
                      std::int64_t n_tokens, float* out, cudaStream_t stream) {
  require(block_size > 0 && n_kv_heads > 0 && head_dim > 0 && n_tokens >= 0, "gather_paged_f32",
          "need positive block_size, n_kv_heads and head_dim and n_tokens >= 0");
  if (n_tokens == 0) return;
  require(cache != nullptr && pages != nullptr && out != nullptr, "gather_paged_f32", "null pointer");
  const i64 kv_dim = static_cast<i64>(n_kv_heads) * head_dim;
  if (kv_dim % 8 == 0 && aligned16(cache) && aligned16(out)) {
    gather_paged_f32_kernel<8><<<grid_for(n_tokens * kv_dim / 8), kThreads, 0, stream>>>(
        cache, block_size, kv_dim, pages, n_tokens, out);
  } else {
    gather_paged_f32_kernel<1><<<grid_for(n_tokens * kv_dim), kThreads, 0, stream>>>(
        cache, block_size, kv_dim, pages, n_tokens, out);
  }
  check_launch("gather_paged_f32");
}

#define CHUNKWISE_INSTANTIATE_OPS(T)                                                                         \
  template void embed(const T*, std::int64_t, std::int64_t, const std::int32_t*, std::int64_t, float*, int*, \
                      cudaStream_t);                                                                         \
  template void add_rms_norm(float*, const float*, const T*, std::int64_t, std::int64_t, float, T*,          \
                             cudaStream_t);                                                                  \
  template void rms_norm_f32(float*, const float*, const T*, std::int64_t, std::int64_t, float, float*,      \
                             cudaStream_t);                                                                  \
  template void rope_write_kv(const float*, std::int64_t, int, int, int, const std::int32_t*, const float*,  \
                              const std::int64_t*, T*, T*, T*, int, cudaStream_t);                           \
  template void swiglu(const float*, std::int64_t, std::int64_t, T*, cudaStream_t);                          \
  template void gather_rows(const T*, std::int64_t, const std::int32_t*, std::int64_t, T*, cudaStream_t);    \
  template void convert(const float*, std::int64_t, T*, cudaStream_t);                                       \
  template void convert(const T*, std::int64_t, float*, cudaStream_t);                                       \
  template void gather_paged_f32(const T*, int, int, int, const std::int32_t*, std::int64_t, float*,         \
                                 cudaStream_t);                                                              \
  template void key_deviation(const float*, std::int64_t, int, int, int, const std::int32_t*, const float*,  \
                              const std::int64_t*, const T*, float*, cudaStream_t);                          \
  template void place_chunk_kv<float>(const ChunkPlacement*, int, std::int64_t, int, int, int, int,          \
                                      const double*, const std::int64_t*, T*, std::int64_t, cudaStream_t);   \
  template void place_chunk_kv<T>(const ChunkPlacement*, int, std::int64_t, int, int, int, int, const double*,\
                                  const std::int64_t*, T*, std::int64_t, cudaStream_t);                      \
  template void gather_chunk_kv(const T*, int, std::int64_t, std::int64_t, int, const std::int64_t*, float*, \
                                cudaStream_t);
CHUNKWISE_INSTANTIATE_OPS(bf16)
CHUNKWISE_INSTANTIATE_OPS(f16)
#undef CHUNKWISE_INSTANTIATE_OPS
template void gather_rows(const float*, std::int64_t, const std::int32_t*, std::int64_t, float*,
                          cudaStream_t);

}  // namespace chunkwise::cuda
