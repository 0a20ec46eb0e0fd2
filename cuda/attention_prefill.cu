// Prefill attention over a paged KV cache, FlashAttention-2 style on sm_80+ tensor cores.
//
// One CTA = one query tile (BM = 64 or 128 rows of one sequence) x one q head; BM/16 warps, each
// owning 16 query rows. Keys go in steps of 64: a K tile and a V tile gathered row by row through
// the page table (any block size; a 64-key step may span several pages) by cp.async into
// XOR-swizzled shared memory, double buffered so that step j+1 loads while step j computes. Per
// step and warp: S = Q K^T (mma.sync m16n8k16 on the storage type, bf16 or f16, fp32
// accumulators, operands by ldmatrix), causal mask only on steps that reach past the warp's first
// query position, online softmax in registers (exp2, scale folded in), O += P V with P re-packed
// (rounded to the storage type) from the S accumulators as the A operand. The output tile is
// staged through shared memory for 16-byte stores.
//
// The step list is either dense (keys [kv_begin, kv_end) in order) or a block-sparse mask row:
// the row's kept key tiles (each 64 or 128 keys, 1 or 2 steps), then its gathered columns in
// chunks of 64 (positions kept in shared memory, masked by validity and position). A KV split
// (partial_base >= 0) writes its normalised fp32 output and log2-sum-exp for the merge kernel.
#include <algorithm>
#include <climits>

#include "attention_internal.cuh"

namespace chunkwise::cuda::attn {
namespace {

constexpr int kBN = kKeyTile;

template <int D, int BM>
struct PrefillShape {
  static constexpr int kWarps = BM / 16;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per row
  static constexpr int kRowsPerPass = kThreads / kChunks;
  static constexpr int kSmemQ = BM * D;  // elements
  static constexpr int kSmemKV = kBN * D;
  static constexpr std::size_t kSmemBytes =
      static_cast<std::size_t>(kSmemQ + 4 * kSmemKV) * sizeof(bf16) + 2 * kBN * sizeof(int);
  // Q fragments stay in registers except for the register-hungry d128 x 128-row tile, which
  // re-reads them from shared memory so that two CTAs (16 warps) fit on an SM.
  static constexpr bool kQInRegs = !(D == 128 && BM == 128);
  // (The alternative for d128 x 128 rows, Q in registers at one CTA per SM, compiles to 237
  // registers without spills: kQInRegs = true, kMinBlocks = 1.)
  static constexpr int kMinBlocks = 2;
  // Keys per score block: a 64-key step is computed in two halves where registers are tight.
  static constexpr int kSubKeys = 64;
};

template <class T, int D, int BM>
__global__ void __launch_bounds__(PrefillShape<D, BM>::kThreads, PrefillShape<D, BM>::kMinBlocks)
    prefill_kernel(const KernelArgs<T> a, const PrefillItem* __restrict__ items) {
  using S = PrefillShape<D, BM>;
  constexpr int kChunks = S::kChunks;
  constexpr int kRowsPerPass = S::kRowsPerPass;
  constexpr int kKvPasses = kBN / kRowsPerPass;
  constexpr int kQPasses = BM / kRowsPerPass;
  constexpr int kKSteps = D / 16;    // k-steps of Q K^T
  constexpr int kSub = S::kSubKeys;  // keys per score block
  constexpr int kSTiles = kSub / 8;  // n-tiles of S per warp
  constexpr int kOTiles = D / 8;     // n-tiles of O per warp
  constexpr bool kQInRegs = S::kQInRegs;
  static_assert(kBN % kRowsPerPass == 0 && BM % kRowsPerPass == 0, "tile shapes");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* const sQ = reinterpret_cast<T*>(smem_raw);
  T* const sK = sQ + S::kSmemQ;
  T* const sV = sK + 2 * S::kSmemKV;
  int* const sPos = reinterpret_cast<int*>(sV + 2 * S::kSmemKV);

  const PrefillItem it = items[blockIdx.y];
  const int h = blockIdx.x;
  const int kvh_off = (h / a.group) * D;
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const std::int32_t* const seq_pages = a.pages + __ldg(a.page_start + it.seq);
  const float sl2 = a.scale_log2;

  const PrefillSteps<kBN> steps(a, it, h);
  const int n_steps = steps.n_steps;

  const int chunk = tid % kChunks;
  const int row0 = tid / kChunks;
  auto issue = [&](int j, int buf) {
    int j0, gather, count;
    steps.step(j, j0, gather, count);
    T* const dk = sK + buf * S::kSmemKV;
    T* const dv = sV + buf * S::kSmemKV;
#pragma unroll
    for (int i = 0; i < kKvPasses; ++i) {
      const int r = row0 + i * kRowsPerPass;
      int p;
      bool valid;
      if (gather < 0) {
        p = j0 + r;
        valid = p >= 0 && p < it.kv_end;
      } else {
        valid = r < count;
        p = valid ? __ldg(a.column_idx + gather + r) : -1;
        valid = valid && p >= 0 && p <= it.max_pos;
        if (chunk == 0) sPos[buf * kBN + r] = valid ? p : INT_MAX;
      }
      const std::int64_t off = valid ? kv_offset(a, seq_pages, p, kvh_off) + chunk * 8 : 0;
      cp_async16(dk + swz<D>(r, chunk), a.k + off, valid);
      cp_async16(dv + swz<D>(r, chunk), a.v + off, valid);
    }
  };

  // ---- prologue: Q tile and step 0 in one group
#pragma unroll
  for (int i = 0; i < kQPasses; ++i) {
    const int r = row0 + i * kRowsPerPass;
    const bool valid = r < it.n_rows;
    const T* src =
        a.q + (static_cast<std::int64_t>(it.row_begin + (valid ? r : 0)) * a.n_heads + h) * D + chunk * 8;
    cp_async16(sQ + swz<D>(r, chunk), src, valid);
  }
  if (n_steps > 0) issue(0, 0);
  cp_async_commit();

  // Query positions of this thread's rows (g, g + 8 of the warp); rows past the tile repeat the
  // last one. A warp with no row of the tile only helps with the loads.
  const int last_row = it.n_rows - 1;
  const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
  const bool warp_active = warp * 16 <= last_row;
  const int pos_lo = __ldg(a.q_pos + it.row_begin + min(r_lo, last_row));
  const int pos_hi = __ldg(a.q_pos + it.row_begin + min(r_hi, last_row));
  int wmin = min(pos_lo, pos_hi), wmax = max(pos_lo, pos_hi);
#pragma unroll
  for (int x = 1; x < 32; x <<= 1) {
    wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, x));
    wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, x));
  }

  float o[kOTiles][4];
#pragma unroll
  for (int n = 0; n < kOTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m[2] = {kNegInf, kNegInf};
  float l[2] = {0.0f, 0.0f};
  [[maybe_unused]] std::uint32_t qf[kQInRegs ? kKSteps : 1][4];

  // A operand (Q rows of this warp, k-step kk) and B operands (K rows, V rows) addresses.
  const int a_row = warp * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
  const int a_chunk = lane >> 4;
  const int k_row = (lane >> 4) * 8 + (lane & 7);
  const int k_chunk = (lane >> 3) & 1;
  const int v_row = ((lane >> 3) & 1) * 8 + (lane & 7);
  const int v_chunk = lane >> 4;

  for (int j = 0; j < n_steps; ++j) {
    cp_async_wait<0>();
    __syncthreads();  // step j visible to all; everyone is done with step j - 1's buffer
    if (j + 1 < n_steps) issue(j + 1, (j + 1) & 1);
    cp_async_commit();
    if constexpr (kQInRegs) {
      if (j == 0) {
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) ldmatrix_x4(qf[kk], sQ + swz<D>(a_row, 2 * kk + a_chunk));
      }
    }
    if (!warp_active) continue;
    int j0, gather, count;
    steps.step(j, j0, gather, count);
    if (gather < 0 && j0 > wmax) continue;  // no row of this warp sees a key of this step
    const T* const kt = sK + (j & 1) * S::kSmemKV;
    const T* const vt = sV + (j & 1) * S::kSmemKV;

#pragma unroll
    for (int sub = 0; sub < kBN / kSub; ++sub) {
      const int k0 = sub * kSub;  // first key of this sub-block within the step
      if (sub > 0 && gather < 0 && j0 + k0 > wmax) break;
      float s[kSTiles][4];
#pragma unroll
      for (int n = 0; n < kSTiles; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        std::uint32_t af[4];
        if constexpr (kQInRegs) {
          af[0] = qf[kk][0], af[1] = qf[kk][1], af[2] = qf[kk][2], af[3] = qf[kk][3];
        } else {
          ldmatrix_x4(af, sQ + swz<D>(a_row, 2 * kk + a_chunk));
        }
#pragma unroll
        for (int nn = 0; nn < kSTiles / 2; ++nn) {
          std::uint32_t b[4];
          ldmatrix_x4(b, kt + swz<D>(k0 + nn * 16 + k_row, 2 * kk + k_chunk));
          mma_16816<T>(s[2 * nn], af, b[0], b[1]);
          mma_16816<T>(s[2 * nn + 1], af, b[2], b[3]);
        }
      }

      // Causal / validity mask, only where some key may be invisible to some row of this warp.
      if (gather >= 0 || j0 + k0 + kSub - 1 > wmin || j0 + k0 + kSub > it.kv_end || j0 < 0) {
#pragma unroll
        for (int n = 0; n < kSTiles; ++n) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int col = k0 + n * 8 + t4 * 2 + e;
            int kp;
            if (gather < 0) {
              kp = j0 + col;
              if (kp >= it.kv_end || kp < 0) kp = INT_MAX;
            } else {
              kp = sPos[(j & 1) * kBN + col];
            }
            if (kp > pos_lo) s[n][e] = kNegInf;
            if (kp > pos_hi) s[n][2 + e] = kNegInf;
          }
        }
      }

      softmax_update(s, o, m, l, sl2);

      // O += P V: P (16 x kSub) as A operands of 16 keys each.
#pragma unroll
      for (int kk = 0; kk < kSub / 16; ++kk) {
        const std::uint32_t pa[4] = {
            pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
            pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int nd = 0; nd < D / 16; ++nd) {
          std::uint32_t b[4];
          ldmatrix_x4_trans(b, vt + swz<D>(k0 + kk * 16 + v_row, 2 * nd + v_chunk));
          mma_16816<T>(o[2 * nd], pa, b[0], b[1]);
          mma_16816<T>(o[2 * nd + 1], pa, b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every copy into sQ has landed before warps reuse their rows for the output
  if (!warp_active) return;

  float inv[2];
  finish_rows(l, inv);

  if (it.partial_base < 0) {
    // Stage the warp's 16 rows (as T) in its own rows of sQ, then 16-byte coalesced stores.
#pragma unroll
    for (int n = 0; n < kOTiles; ++n) {
      *reinterpret_cast<std::uint32_t*>(sQ + swz<D>(r_lo, n) + t4 * 2) =
          pack2<T>(o[n][0] * inv[0], o[n][1] * inv[0]);
      *reinterpret_cast<std::uint32_t*>(sQ + swz<D>(r_hi, n) + t4 * 2) =
          pack2<T>(o[n][2] * inv[1], o[n][3] * inv[1]);
    }
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 16 * kChunks / 32; ++i) {
      const int c = lane + i * 32;
      const int rr = warp * 16 + c / kChunks;
      const int ch = c % kChunks;
      if (rr <= last_row) {
        T* dst = a.out + (static_cast<std::int64_t>(it.row_begin + rr) * a.n_heads + h) * D + ch * 8;
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(sQ + swz<D>(rr, ch));
      }
    }
  } else {
    write_partial_rows(a, it, h, r_lo, o, m, l, inv, t4);
  }
}

template <class T, int D, int BM>
void launch_t(const KernelArgs<T>& a, const PrefillItem* items, int n_items, cudaStream_t stream) {
  using S = PrefillShape<D, BM>;
  // gridDim.y is at most 65535: long work lists go in several launches.
  constexpr int kMaxY = 65535;
  for (int first = 0; first < n_items; first += kMaxY) {
    const dim3 grid(static_cast<unsigned>(a.n_heads),
                    static_cast<unsigned>(std::min(kMaxY, n_items - first)));
    prefill_kernel<T, D, BM><<<grid, S::kThreads, S::kSmemBytes, stream>>>(a, items + first);
    check_launch("attention prefill kernel");
  }
}

template <class T, int D, int BM>
int prepare_t() {
  using S = PrefillShape<D, BM>;
  check_cuda(cudaFuncSetAttribute(prefill_kernel<T, D, BM>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(S::kSmemBytes)),
             "cudaFuncSetAttribute(attention prefill)");
  int blocks = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, prefill_kernel<T, D, BM>, S::kThreads,
                                                           S::kSmemBytes),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor(attention prefill)");
  return std::max(blocks, 1);
}

template <int D, int BM>
int prepare_both() {
  return std::min(prepare_t<bf16, D, BM>(), prepare_t<f16, D, BM>());
}

}  // namespace

template <class T>
void launch_prefill(const KernelArgs<T>& a, const PrefillItem* items, int n_items, int head_dim,
                    int tile_rows, cudaStream_t stream) {
  if (n_items <= 0) return;
  if (head_dim == 64) {
    tile_rows == 128 ? launch_t<T, 64, 128>(a, items, n_items, stream)
                     : launch_t<T, 64, 64>(a, items, n_items, stream);
  } else {
    tile_rows == 128 ? launch_t<T, 128, 128>(a, items, n_items, stream)
                     : launch_t<T, 128, 64>(a, items, n_items, stream);
  }
}
template void launch_prefill(const KernelArgs<bf16>&, const PrefillItem*, int, int, int, cudaStream_t);
template void launch_prefill(const KernelArgs<f16>&, const PrefillItem*, int, int, int, cudaStream_t);

int prepare_prefill(int head_dim, int tile_rows) {
  if (head_dim == 64) return tile_rows == 128 ? prepare_both<64, 128>() : prepare_both<64, 64>();
  return tile_rows == 128 ? prepare_both<128, 128>() : prepare_both<128, 64>();
}

std::size_t prefill_smem_bytes(int head_dim, int tile_rows) {
  if (head_dim == 64)
    return tile_rows == 128 ? PrefillShape<64, 128>::kSmemBytes : PrefillShape<64, 64>::kSmemBytes;
  return tile_rows == 128 ? PrefillShape<128, 128>::kSmemBytes : PrefillShape<128, 64>::kSmemBytes;
}

}  // namespace chunkwise::cuda::attn
