// Decode attention (one query row per sequence) over a paged KV cache, and the merge of KV splits.
//
// One CTA = one (query row, KV head, KV split), holding all q heads of the GQA group (up to 16;
// larger groups take several CTAs) as the 16 rows of an mma tile: the KV of the group is read once.
// The split's keys stream through shared memory in stages of 64 (4 warps x 16 keys), three stages
// in flight: each thread issues 16-byte cp.async copies for its rows, whose page ids it loaded one
// stage earlier (so the page-table read is off the critical path). Per stage each warp computes
// S = Q K^T for its 16 keys and O += P V with mma.sync (tensor cores make the arithmetic free;
// the kernel is bound by the KV read), keeping its own online softmax; the four warps' (m, l, O)
// are merged through shared memory at the end. A split writes normalised fp32 O and the
// log2-sum-exp to the partial buffers, and merge_kernel combines the splits of a row.
#include <algorithm>

#include "attention_internal.cuh"

namespace chunkwise::cuda::attn {
namespace {

template <int D>
struct DecodeShape {
  static constexpr int kThreads = kDecodeWarps * 32;
  static constexpr int kChunks = D / 8;
  static constexpr int kRowsPerPass = kThreads / kChunks;
  static constexpr int kKeysPerThread = kDecodeStageKeys / kRowsPerPass;
  static constexpr int kQPasses = (16 + kRowsPerPass - 1) / kRowsPerPass;
  static constexpr int kStageElems = kDecodeStageKeys * D;
  static constexpr int kSmemQ = 16 * D;
  static constexpr std::size_t kSmemBytes =
      static_cast<std::size_t>(kSmemQ + 2 * kDecodeStages * kStageElems) * sizeof(bf16);
  // Epilogue scratch over the stage buffers: per warp 16 rows of O (padded) and m, l.
  static constexpr int kOStride = D + 8;
  static constexpr std::size_t kScratchBytes =
      static_cast<std::size_t>(kDecodeWarps * 16 * kOStride + 2 * kDecodeWarps * 16) * sizeof(float);
  static_assert(kScratchBytes <= 2 * kDecodeStages * kStageElems * sizeof(bf16), "epilogue scratch");
  static_assert(16 % kRowsPerPass == 0 || kRowsPerPass % 16 == 0, "Q rows per pass");
  static constexpr int kMinBlocks = D == 64 ? 4 : 2;
};

template <class T, int D>
__global__ void __launch_bounds__(DecodeShape<D>::kThreads, DecodeShape<D>::kMinBlocks)
    decode_kernel(const KernelArgs<T> a, const DecodeItem* __restrict__ items, int head_groups) {
  using S = DecodeShape<D>;
  constexpr int kThreads = S::kThreads;
  constexpr int kChunks = S::kChunks;
  constexpr int kRowsPerPass = S::kRowsPerPass;
  constexpr int kKpt = S::kKeysPerThread;
  constexpr int kStages = kDecodeStages;
  constexpr int kStageKeys = kDecodeStageKeys;
  constexpr int kKSteps = D / 16;
  constexpr int kOTiles = D / 8;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* const sQ = reinterpret_cast<T*>(smem_raw);
  T* const sK = sQ + S::kSmemQ;
  T* const sV = sK + kStages * S::kStageElems;

  const DecodeItem it = items[blockIdx.x];
  const int kvh = static_cast<int>(blockIdx.y) / head_groups;
  const int hg = static_cast<int>(blockIdx.y) - kvh * head_groups;
  const int h0 = kvh * a.group + hg * kDecodeHeadsPerCta;
  const int nh = min(kDecodeHeadsPerCta, a.group - hg * kDecodeHeadsPerCta);
  const int kvh_off = kvh * D;
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const std::int32_t* const seq_pages = a.pages + __ldg(a.page_start + it.seq);
  const float sl2 = a.scale_log2;
  const int n_stages = (it.kv_end - it.kv_begin + kStageKeys - 1) / kStageKeys;
  const int chunk = tid % kChunks;
  const int row0 = tid / kChunks;

  // Q rows (the group's heads; rows >= nh are zero).
#pragma unroll
  for (int i = 0; i < S::kQPasses; ++i) {
    const int r = row0 + i * kRowsPerPass;
    if (r < 16) {
      const bool valid = r < nh;
      const T* src =
          a.q + (static_cast<std::int64_t>(it.row) * a.n_heads + h0 + (valid ? r : 0)) * D + chunk * 8;
      cp_async16(sQ + swz<D>(r, chunk), src, valid);
    }
  }

  // Page ids of this thread's rows of a stage, loaded one stage ahead of their copies.
  int pg[kKpt];
  auto block_slot = [&](int p, int& blk, int& slot) {
    if (a.bs_shift >= 0) {
      blk = p >> a.bs_shift;
      slot = p & (a.block_size - 1);
    } else {
      blk = p / a.block_size;
      slot = p - blk * a.block_size;
    }
  };
  auto fetch_pages = [&](int st) {
#pragma unroll
    for (int i = 0; i < kKpt; ++i) {
      const int p = it.kv_begin + st * kStageKeys + row0 + i * kRowsPerPass;
      int blk, slot;
      block_slot(p, blk, slot);
      pg[i] = (st < n_stages && p < it.kv_end) ? __ldg(seq_pages + blk) : 0;
    }
  };
  auto issue = [&](int st) {
    T* const dk = sK + (st % kStages) * S::kStageElems;
    T* const dv = sV + (st % kStages) * S::kStageElems;
#pragma unroll
    for (int i = 0; i < kKpt; ++i) {
      const int r = row0 + i * kRowsPerPass;
      const int p = it.kv_begin + st * kStageKeys + r;
      const bool valid = p < it.kv_end;
      int blk, slot;
      block_slot(p, blk, slot);
      const std::int64_t off = valid ? static_cast<std::int64_t>(pg[i]) * a.block_stride +
                                           slot * a.row_stride + kvh_off + chunk * 8
                                     : 0;
      cp_async16(dk + swz<D>(r, chunk), a.k + off, valid);
      cp_async16(dv + swz<D>(r, chunk), a.v + off, valid);
    }
  };

  fetch_pages(0);
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < n_stages) {
      issue(st);
      fetch_pages(st + 1);
    }
    cp_async_commit();
  }

  float o[kOTiles][4];
#pragma unroll
  for (int n = 0; n < kOTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {kNegInf, kNegInf};
  float l[2] = {0.0f, 0.0f};
  std::uint32_t qf[kKSteps][4];

  const int a_row = ((lane >> 3) & 1) * 8 + (lane & 7);
  const int a_chunk = lane >> 4;
  const int k_row = warp * 16 + (lane >> 4) * 8 + (lane & 7);
  const int k_chunk = (lane >> 3) & 1;
  const int v_row = warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
  const int v_chunk = lane >> 4;

  for (int t = 0; t < n_stages; ++t) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // stage t visible; stage t - 1's buffer free for stage t + kStages - 1
    {
      const int st = t + kStages - 1;
      if (st < n_stages) {
        issue(st);
        fetch_pages(st + 1);
      }
      cp_async_commit();
    }
    if (t == 0) {
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) ldmatrix_x4(qf[kk], sQ + swz<D>(a_row, 2 * kk + a_chunk));
    }
    const int kb = it.kv_begin + t * kStageKeys + warp * 16;  // this warp's first key
    if (kb >= it.kv_end) continue;
    const T* const kt = sK + (t % kStages) * S::kStageElems;
    const T* const vt = sV + (t % kStages) * S::kStageElems;

    float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      std::uint32_t b[4];
      ldmatrix_x4(b, kt + swz<D>(k_row, 2 * kk + k_chunk));
      mma_16816<T>(s[0], qf[kk], b[0], b[1]);
      mma_16816<T>(s[1], qf[kk], b[2], b[3]);
    }
    if (kb + 16 > it.kv_end) {
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (kb + n * 8 + t4 * 2 + e >= it.kv_end) s[n][e] = s[n][2 + e] = kNegInf;
        }
      }
    }
    softmax_update(s, o, m, l, sl2);
    const std::uint32_t pa[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]),
                                 pack2<T>(s[1][0], s[1][1]), pack2<T>(s[1][2], s[1][3])};
#pragma unroll
    for (int nd = 0; nd < D / 16; ++nd) {
      std::uint32_t b[4];
      ldmatrix_x4_trans(b, vt + swz<D>(v_row, 2 * nd + v_chunk));
      mma_16816<T>(o[2 * nd], pa, b[0], b[1]);
      mma_16816<T>(o[2 * nd + 1], pa, b[2], b[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // stage buffers free: reuse them as the epilogue scratch

  float* const sO = reinterpret_cast<float*>(sK);
  float* const sM = sO + kDecodeWarps * 16 * S::kOStride;
  float* const sL = sM + kDecodeWarps * 16;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  {
    float* const o_lo = sO + (warp * 16 + g) * S::kOStride;
    float* const o_hi = o_lo + 8 * S::kOStride;
#pragma unroll
    for (int n = 0; n < kOTiles; ++n) {
      *reinterpret_cast<float2*>(o_lo + n * 8 + t4 * 2) = make_float2(o[n][0], o[n][1]);
      *reinterpret_cast<float2*>(o_hi + n * 8 + t4 * 2) = make_float2(o[n][2], o[n][3]);
    }
    if (t4 == 0) {
      sM[warp * 16 + g] = m[0];
      sL[warp * 16 + g] = l[0];
      sM[warp * 16 + g + 8] = m[1];
      sL[warp * 16 + g + 8] = l[1];
    }
  }
  __syncthreads();

  for (int idx = tid; idx < nh * (D / 4); idx += kThreads) {
    const int r = idx / (D / 4);
    const int c4 = idx - r * (D / 4);
    float mstar = kNegInf;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) mstar = fmaxf(mstar, sM[w * 16 + r]);
    float lsum = 0.0f;
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float mw = sM[w * 16 + r];
      if (mw == kNegInf) continue;  // this warp saw no key
      const float f = fast_exp2((mw - mstar) * sl2);
      lsum += f * sL[w * 16 + r];
      const float4 ow = *reinterpret_cast<const float4*>(sO + (w * 16 + r) * S::kOStride + c4 * 4);
      acc.x += f * ow.x;
      acc.y += f * ow.y;
      acc.z += f * ow.z;
      acc.w += f * ow.w;
    }
    const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
    if (it.partial < 0) {
      T* dst = a.out + (static_cast<std::int64_t>(it.row) * a.n_heads + h0 + r) * D + c4 * 4;
      uint2 packed;
      packed.x = pack2<T>(acc.x * inv, acc.y * inv);
      packed.y = pack2<T>(acc.z * inv, acc.w * inv);
      *reinterpret_cast<uint2*>(dst) = packed;
    } else {
      const std::int64_t base = static_cast<std::int64_t>(it.partial) * a.n_heads + h0 + r;
      *reinterpret_cast<float4*>(a.part_o + base * D + c4 * 4) =
          make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
      if (c4 == 0) a.part_lse[base] = lsum > 0.0f ? mstar * sl2 + __log2f(lsum) : kNegInf;
    }
  }
}

// out[row, h, :] = sum_s w_s o_s / sum_s w_s with w_s = 2^(lse_s - max): one warp per (merged row,
// head), kMergeWarps heads per CTA. The lanes read the splits' lse at once and reduce across the
// warp, then each lane sums its float4 of O over its share of the splits with independent loads:
// a merge is a few dependent memory round trips, not one per split (it runs every layer of a
// narrow step, where its latency is the step's).
constexpr int kMergeWarps = 4;

template <class T, int D>
__global__ void __launch_bounds__(kMergeWarps * 32)
    merge_kernel(const KernelArgs<T> a, const MergeItem* __restrict__ items) {
  constexpr int kLanesPerSplit = D / 4;  // float4s of one head's O
  constexpr int kSplitsPerPass = 32 / kLanesPerSplit;
  static_assert(32 % kLanesPerSplit == 0, "a warp covers whole rows of O");
  const MergeItem it = items[blockIdx.x];
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int h = static_cast<int>(blockIdx.y) * kMergeWarps + warp;
  if (h >= a.n_heads) return;
  const float* const lse = a.part_lse + static_cast<std::int64_t>(it.base) * a.n_heads + h;
  float mx = kNegInf;
  for (int s = lane; s < it.n_splits; s += 32) mx = fmaxf(mx, lse[static_cast<std::int64_t>(s) * a.n_heads]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (mx == kNegInf) mx = 0.0f;  // no split saw a key of this row: every weight is 0

  const int c4 = lane % kLanesPerSplit;
  float wsum = 0.0f;
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
  for (int s = lane / kLanesPerSplit; s < it.n_splits; s += kSplitsPerPass) {
    const std::int64_t slot = static_cast<std::int64_t>(it.base + s) * a.n_heads + h;
    const float l = a.part_lse[slot];
    const float4 p = *reinterpret_cast<const float4*>(a.part_o + slot * D + c4 * 4);
    if (l == kNegInf) continue;  // the split saw no key of this row (its O is not written)
    const float w = fast_exp2(l - mx);
    wsum += w;
    acc.x += w * p.x;
    acc.y += w * p.y;
    acc.z += w * p.z;
    acc.w += w * p.w;
  }
  for (int o = kLanesPerSplit; o < 32; o <<= 1) {
    wsum += __shfl_xor_sync(0xffffffffu, wsum, o);
    acc.x += __shfl_xor_sync(0xffffffffu, acc.x, o);
    acc.y += __shfl_xor_sync(0xffffffffu, acc.y, o);
    acc.z += __shfl_xor_sync(0xffffffffu, acc.z, o);
    acc.w += __shfl_xor_sync(0xffffffffu, acc.w, o);
  }
  if (lane >= kLanesPerSplit) return;
  const float inv = wsum > 0.0f ? 1.0f / wsum : 0.0f;
  uint2 packed;
  packed.x = pack2<T>(acc.x * inv, acc.y * inv);
  packed.y = pack2<T>(acc.z * inv, acc.w * inv);
  *reinterpret_cast<uint2*>(a.out + (static_cast<std::int64_t>(it.row) * a.n_heads + h) * D + c4 * 4) =
      packed;
}

template <class T, int D>
void launch_decode_t(const KernelArgs<T>& a, const DecodeItem* items, int n_items, int n_kv_heads,
                     int head_groups, cudaStream_t stream) {
  using S = DecodeShape<D>;
  const dim3 grid(static_cast<unsigned>(n_items), static_cast<unsigned>(n_kv_heads * head_groups));
  decode_kernel<T, D><<<grid, S::kThreads, S::kSmemBytes, stream>>>(a, items, head_groups);
  check_launch("attention decode kernel");
}

template <class T, int D>
int prepare_decode_t() {
  using S = DecodeShape<D>;
  check_cuda(cudaFuncSetAttribute(decode_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(S::kSmemBytes)),
             "cudaFuncSetAttribute(attention decode)");
  int blocks = 0;
  check_cuda(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, decode_kernel<T, D>, S::kThreads, S::kSmemBytes),
      "cudaOccupancyMaxActiveBlocksPerMultiprocessor(attention decode)");
  return std::max(blocks, 1);
}

template <int D>
int prepare_decode_both() {
  return std::min(prepare_decode_t<bf16, D>(), prepare_decode_t<f16, D>());
}

}  // namespace

template <class T>
void launch_decode(const KernelArgs<T>& a, const DecodeItem* items, int n_items, int n_kv_heads,
                   int head_groups, int head_dim, cudaStream_t stream) {
  if (n_items <= 0) return;
  if (head_dim == 64) {
    launch_decode_t<T, 64>(a, items, n_items, n_kv_heads, head_groups, stream);
  } else {
    launch_decode_t<T, 128>(a, items, n_items, n_kv_heads, head_groups, stream);
  }
}
template void launch_decode(const KernelArgs<bf16>&, const DecodeItem*, int, int, int, int, cudaStream_t);
template void launch_decode(const KernelArgs<f16>&, const DecodeItem*, int, int, int, int, cudaStream_t);

template <class T>
void launch_merge(const KernelArgs<T>& a, const MergeItem* items, int n_items, int head_dim,
                  cudaStream_t stream) {
  if (n_items <= 0) return;
  const dim3 grid(static_cast<unsigned>(n_items),
                  static_cast<unsigned>((a.n_heads + kMergeWarps - 1) / kMergeWarps));
  if (head_dim == 64) {
    merge_kernel<T, 64><<<grid, kMergeWarps * 32, 0, stream>>>(a, items);
  } else {
    merge_kernel<T, 128><<<grid, kMergeWarps * 32, 0, stream>>>(a, items);
  }
  check_launch("attention merge kernel");
}
template void launch_merge(const KernelArgs<bf16>&, const MergeItem*, int, int, cudaStream_t);
template void launch_merge(const KernelArgs<f16>&, const MergeItem*, int, int, cudaStream_t);

int prepare_decode(int head_dim) {
  return head_dim == 64 ? prepare_decode_both<64>() : prepare_decode_both<128>();
}

std::size_t decode_smem_bytes(int head_dim) {
  return head_dim == 64 ? DecodeShape<64>::kSmemBytes : DecodeShape<128>::kSmemBytes;
}

}  // namespace chunkwise::cuda::attn
