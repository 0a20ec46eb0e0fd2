// Private to the attention kernels (cuda/attention_*.cu): the work-list records plan() uploads,
// the kernel argument block, the launchers, and the sm_80 building blocks (cp.async, ldmatrix,
// mma.sync m16n8k16 bf16/f16) the kernels share. Kernels, arguments and launchers are templates
// over the storage type T (bf16, f16).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "chunkwise/cuda/attention.hpp"
#include "storage.cuh"

namespace chunkwise::cuda::attn {

// Keys per inner step (one K tile and one V tile in shared memory).
constexpr int kKeyTile = 64;
// Decode: keys per pipeline stage (4 warps x 16 keys) and stages in flight.
constexpr int kDecodeWarps = 4;
constexpr int kDecodeStageKeys = 16 * kDecodeWarps;
constexpr int kDecodeStages = 3;
// Decode rows are handled in groups of at most this many q heads (the mma's 16 rows).
constexpr int kDecodeHeadsPerCta = 16;

// One prefill CTA (per q head): query rows [row_begin, row_begin + n_rows) of sequence seq, all
// at positions in [min_pos, max_pos], over the keys [kv_begin, kv_end) (dense) or the mask row
// (sparse; then kv_begin = 0 and kv_end = max_pos + 1). partial_base >= 0: a KV split, whose
// result for row i goes to partial slot partial_base + i * partial_stride (merged later).
struct PrefillItem {
  std::int32_t seq;
  std::int32_t row_begin;
  std::int32_t n_rows;
  std::int32_t min_pos;
  std::int32_t max_pos;
  std::int32_t kv_begin;
  std::int32_t kv_end;
  std::int32_t qtile_local;  // query tile index from the sequence's first (mask row order)
  std::int32_t n_qtiles;     // query tiles of the sequence
  std::int32_t partial_base;
  std::int32_t partial_stride;
  std::int32_t pad;
};

// One decode CTA (per KV head and head group): query row `row` of sequence seq over the keys
// [kv_begin, kv_end); partial >= 0: a KV split whose result goes to that partial slot.
struct DecodeItem {
  std::int32_t row;
  std::int32_t seq;
  std::int32_t kv_begin;
  std::int32_t kv_end;
  std::int32_t partial;
  std::int32_t pad[3];
};

// Row `row` of out = merge of partial slots [base, base + n_splits).
struct MergeItem {
  std::int32_t row;
  std::int32_t base;
  std::int32_t n_splits;
  std::int32_t pad;
};

// Everything a kernel needs besides its work list, by value.
template <class T>
struct KernelArgs {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  const std::int32_t* page_start;
  const std::int32_t* pages;
  const std::int32_t* q_pos;
  float* part_o;              // [slot][n_heads][head_dim]
  float* part_lse;            // [slot][n_heads], log2 domain
  std::int64_t block_stride;  // elements
  int row_stride;             // n_kv_heads * head_dim: elements between tokens of a block
  int n_heads;
  int group;  // q heads per kv head
  int block_size;
  int bs_shift;      // log2(block_size) when a power of two, else -1
  float scale_log2;  // softmax scale * log2(e)
  // Mask (row_ptr == nullptr: dense).
  int mask_tile;
  const std::int32_t* seq_row_start;
  const std::int32_t* row_ptr;
  const std::int32_t* col_idx;
  const std::int32_t* column_ptr;
  const std::int32_t* column_idx;
};

// Launchers (attention_prefill.cu, attention_prefill_sm90.cu, attention_decode.cu). head_dim is 64
// or 128, tile_rows 64 or 128.
template <class T>
void launch_prefill(const KernelArgs<T>& a, const PrefillItem* items, int n_items, int head_dim,
                    int tile_rows, cudaStream_t stream);
// The Hopper prefill kernel (128-row tiles, 128-key steps; a mask's tile must be 128): available
// when this build holds sm_90a code and the current device is compute capability 9.0.
bool wgmma_prefill_available();
template <class T>
void launch_prefill_wgmma(const KernelArgs<T>& a, const PrefillItem* items, int n_items, int head_dim,
                          cudaStream_t stream);
// Raises the kernel's shared memory limit on the current device.
void prepare_prefill_wgmma(int head_dim);
template <class T>
void launch_decode(const KernelArgs<T>& a, const DecodeItem* items, int n_items, int n_kv_heads,
                   int head_groups, int head_dim, cudaStream_t stream);
template <class T>
void launch_merge(const KernelArgs<T>& a, const MergeItem* items, int n_items, int head_dim,
                  cudaStream_t stream);
// Raise the dynamic shared memory limits on the current device and report resident CTAs per SM, for
// both storage types (plan() does not know which one run() will get; the fewer CTAs count).
int prepare_prefill(int head_dim, int tile_rows);
int prepare_decode(int head_dim);
std::size_t prefill_smem_bytes(int head_dim, int tile_rows);
std::size_t decode_smem_bytes(int head_dim);

// ---- device building blocks -------------------------------------------------------------------
#if defined(__CUDACC__)

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; when !valid nothing is read and the destination is zeroed.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices; lanes 8i..8i+7 give the row addresses of matrix i, register i receives
// it (thread t: row t/4, columns 2(t%4), 2(t%4)+1; transposed with .trans).
__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d[16x8] += a[16x16] * b[16x8], T inputs, fp32 accumulators.
template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                          std::uint32_t b1) {
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// 2^x (ex2.approx: 2 ulp, -inf -> +0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// A [rows][D] 16-bit tile in shared memory, 16-byte chunks XOR-swizzled by row so that the 8 rows
// an ldmatrix reads (and a warp's cp.async writes) fall in distinct banks. Offset in elements.
template <int D>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * D + ((chunk ^ (row & 7)) << 3);
}

// Element offset of token position p of kv head kvh in one layer's K (or V) cache.
template <class T>
__device__ __forceinline__ std::int64_t kv_offset(const KernelArgs<T>& a, const std::int32_t* seq_pages,
                                                  int p, int kvh_offset) {
  int blk, slot;
  if (a.bs_shift >= 0) {
    blk = p >> a.bs_shift;
    slot = p & (a.block_size - 1);
  } else {
    blk = p / a.block_size;
    slot = p - blk * a.block_size;
  }
  const std::int32_t page = __ldg(seq_pages + blk);
  return static_cast<std::int64_t>(page) * a.block_stride + slot * a.row_stride + kvh_offset;
}

constexpr float kNegInf = -__builtin_huge_valf();

// The key steps of one prefill work item for one q head: dense (keys [kv_begin, kv_end) in steps of
// BN), or its block-sparse mask row (the kept tiles, mask_tile / BN steps each, tiles past the last
// query dropped, then the gathered columns in chunks of BN).
template <int BN>
struct PrefillSteps {
  bool sparse = false;
  int n_steps = 0;
  int n_tile_steps = 0, tile_begin = 0, col_begin = 0, col_end = 0, steps_per_tile = 1;
  int kv_begin = 0, mask_tile = 0;
  const std::int32_t* col_idx = nullptr;

  template <class T>
  __device__ PrefillSteps(const KernelArgs<T>& a, const PrefillItem& it, int h)
      : kv_begin(it.kv_begin), mask_tile(a.mask_tile), col_idx(a.col_idx) {
    if (a.row_ptr != nullptr) {
      const int rs = __ldg(a.seq_row_start + it.seq);
      const int re = __ldg(a.seq_row_start + it.seq + 1);
      if (re > rs) {
        sparse = true;
        const int mrow = rs + h * it.n_qtiles + it.qtile_local;
        steps_per_tile = mask_tile / BN;
        tile_begin = __ldg(a.row_ptr + mrow);
        int tile_end = __ldg(a.row_ptr + mrow + 1);
        // Tiles past the last query are dropped (the list is sorted: they are at the end).
        while (tile_end > tile_begin && __ldg(col_idx + tile_end - 1) * mask_tile > it.max_pos) --tile_end;
        if (tile_end > tile_begin) {
          const int last = __ldg(col_idx + tile_end - 1);
          const int last_steps = min(steps_per_tile, (it.max_pos + 1 - last * mask_tile + BN - 1) / BN);
          n_tile_steps = (tile_end - tile_begin - 1) * steps_per_tile + last_steps;
        }
        if (a.column_ptr != nullptr) {
          col_begin = __ldg(a.column_ptr + mrow);
          col_end = max(col_begin, __ldg(a.column_ptr + mrow + 1));
        }
        n_steps = n_tile_steps + (col_end - col_begin + BN - 1) / BN;
      }
    }
    if (!sparse) n_steps = (it.kv_end - it.kv_begin + BN - 1) / BN;
  }

  // Step j: the contiguous keys [j0, j0 + BN) when gather < 0, else the positions
  // column_idx[gather .. gather + count).
  __device__ void step(int j, int& j0, int& gather, int& count) const {
    count = 0;
    gather = -1;
    if (!sparse) {
      j0 = kv_begin + j * BN;
    } else if (j < n_tile_steps) {
      const int q = j / steps_per_tile;
      j0 = __ldg(col_idx + tile_begin + q) * mask_tile + (j - q * steps_per_tile) * BN;
    } else {
      j0 = 0;
      gather = col_begin + (j - n_tile_steps) * BN;
      count = min(BN, col_end - gather);
    }
  }
};

// Online softmax for a warp's 16 rows over NS n-tiles of scores (thread: rows g and g+8), then
// rescaling of the NO n-tiles of O. m in raw score units: the reference of the row's exponentials,
// l a per-thread partial sum.
// The reference moves only when a row's maximum grows past it by more than kRescaleLog2 (in log2
// units), as FlashAttention-4 does: the exponentials then stay below 2^kRescaleLog2, far inside
// fp32 (and bf16 P), and most steps of a long row skip the 2 x NO x 2 multiplications of O. O / l
// and the log-sum-exp m + log2(l) do not depend on the reference.
constexpr float kRescaleLog2 = 8.0f;

template <int NS, int NO>
__device__ __forceinline__ void softmax_update(float (&s)[NS][4], float (&o)[NO][4], float (&m)[2],
                                               float (&l)[2], float sl2) {
  // Four partial reductions per row: one chain of 2 x NS dependent instructions would sit on the
  // critical path between the score product and the P V product.
  constexpr int kAcc = NS >= 4 ? 4 : NS;
  static_assert(NS % kAcc == 0, "n-tiles in whole groups of partial reductions");
  float t0[kAcc], t1[kAcc];
#pragma unroll
  for (int a = 0; a < kAcc; ++a) {
    t0[a] = fmaxf(s[a][0], s[a][1]);
    t1[a] = fmaxf(s[a][2], s[a][3]);
  }
#pragma unroll
  for (int n = kAcc; n < NS; ++n) {
    t0[n % kAcc] = fmaxf(t0[n % kAcc], fmaxf(s[n][0], s[n][1]));
    t1[n % kAcc] = fmaxf(t1[n % kAcc], fmaxf(s[n][2], s[n][3]));
  }
#pragma unroll
  for (int a = 1; a < kAcc; ++a) {
    t0[0] = fmaxf(t0[0], t0[a]);
    t1[0] = fmaxf(t1[0], t1[a]);
  }
  float mx[2] = {t0[0], t1[0]};
  float ms[2], corr[2];
  bool grow = false;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
    // m = -inf with a finite maximum: infinite growth; both -inf: NaN, no growth.
    const bool row_grows = (mx[r] - m[r]) * sl2 > kRescaleLog2;
    corr[r] = row_grows ? fast_exp2((m[r] - mx[r]) * sl2) : 1.0f;  // m = -inf: 0
    if (row_grows) m[r] = mx[r];
    grow = grow || row_grows;
    ms[r] = m[r] == kNegInf ? 0.0f : m[r] * sl2;
  }
#pragma unroll
  for (int a = 0; a < kAcc; ++a) t0[a] = t1[a] = 0.0f;
#pragma unroll
  for (int n = 0; n < NS; ++n) {
    s[n][0] = fast_exp2(fmaf(s[n][0], sl2, -ms[0]));
    s[n][1] = fast_exp2(fmaf(s[n][1], sl2, -ms[0]));
    s[n][2] = fast_exp2(fmaf(s[n][2], sl2, -ms[1]));
    s[n][3] = fast_exp2(fmaf(s[n][3], sl2, -ms[1]));
    t0[n % kAcc] += s[n][0] + s[n][1];
    t1[n % kAcc] += s[n][2] + s[n][3];
  }
#pragma unroll
  for (int a = 1; a < kAcc; ++a) {
    t0[0] += t0[a];
    t1[0] += t1[a];
  }
  l[0] = l[0] * corr[0] + t0[0];
  l[1] = l[1] * corr[1] + t1[0];
  // Warp-uniform, so that the branch does not diverge.
  if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
    for (int n = 0; n < NO; ++n) {
      o[n][0] *= corr[0];
      o[n][1] *= corr[0];
      o[n][2] *= corr[1];
      o[n][3] *= corr[1];
    }
  }
}

// The end of a warp's rows (thread: rows r_lo and r_lo + 8, columns t4 * 2 + {0, 1} of each of
// the NO 8-wide tiles of O): the softmax sums over the quad, and the factors that normalise O.
__device__ __forceinline__ void finish_rows(float (&l)[2], float (&inv)[2]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    inv[r] = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
  }
}

// A KV split's result for those rows (of query tile it, q head h): normalised fp32 O and the
// log2-sum-exp, in the partial slots the merge kernel reads.
template <class T, int NO>
__device__ __forceinline__ void write_partial_rows(const KernelArgs<T>& a, const PrefillItem& it, int h,
                                                   int r_lo, const float (&o)[NO][4], const float (&m)[2],
                                                   const float (&l)[2], const float (&inv)[2], int t4) {
  constexpr int D = NO * 8;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r_lo + 8 * r;
    if (row >= it.n_rows) continue;
    const std::int64_t slot =
        static_cast<std::int64_t>(it.partial_base) + static_cast<std::int64_t>(row) * it.partial_stride;
    float* po = a.part_o + (slot * a.n_heads + h) * D;
#pragma unroll
    for (int n = 0; n < NO; ++n) {
      *reinterpret_cast<float2*>(po + n * 8 + t4 * 2) =
          make_float2(o[n][2 * r] * inv[r], o[n][2 * r + 1] * inv[r]);
    }
    if (t4 == 0)
      a.part_lse[slot * a.n_heads + h] = l[r] > 0.0f ? m[r] * a.scale_log2 + __log2f(l[r]) : kNegInf;
  }
}

#endif  // __CUDACC__

}  // namespace chunkwise::cuda::attn
