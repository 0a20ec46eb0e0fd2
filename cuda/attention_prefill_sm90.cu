// Prefill attention on Hopper (sm_90a): the work list and results of the sm_80 kernel
// (attention_prefill.cu), with the matrix products on warpgroup MMA (wgmma) and the loads in a
// producer warpgroup, as in FlashAttention-3 (Shah et al., 2024).
//
// One CTA = one 128-row query tile x one q head, three warpgroups:
//   - warpgroup 0 (producer) gathers the Q tile, then each 128-key step's K and V tiles through the
//     page table with cp.async (any block size; TMA cannot gather pages) into shared memory laid
//     out in wgmma's 128-byte-swizzled canonical layout, three stages deep. Each thread looks up
//     one key row's page per step into a shared table (a page lookup per copied row was what held
//     the first version at 210 TFLOP/s); the copies arrive on per-stage mbarriers by themselves
//     (cp.async.mbarrier.arrive), so the producer never waits for its own loads;
//   - warpgroups 1 and 2 (consumers) own 64 query rows each. Per step: S = Q K^T (wgmma, both
//     operands from shared memory, fp32 accumulators in registers), the causal / validity mask,
//     online softmax in registers, O += P V (wgmma with P from registers, V from shared memory
//     read transposed), releasing K after the first product and V after the second.
// The consumers take turns on the tensor cores (FlashAttention-3's inter-warpgroup ping-pong,
// named barriers kTurnBarrier + warpgroup): a warpgroup issues its step's products (Q K^T of the
// step and P V of the one before) in its turn and passes the turn to the other, so one
// warpgroup's softmax overlaps the other's matrix products. Registers move from the producer to
// the consumers (setmaxnreg).
// Step lists (dense or a 128-tile mask row plus gathered columns), KV splits and the output are
// those of the sm_80 kernel.
#include <algorithm>
#include <climits>
#include <mutex>
#include <vector>

#include "attention_internal.cuh"

namespace chunkwise::cuda::attn {
namespace {

constexpr int kRows = 128;  // query rows per CTA (two consumer warpgroups of 64)
constexpr int kKeys = 128;  // keys per step
constexpr int kStages = 3;  // D = 128: 32 KB of Q + 3 x 64 KB of K and V, within the 227 KB a CTA may take
constexpr int kThreads = 384;
// setmaxnreg moves registers between the warpgroups inside what the launch allocated (168 per
// thread at 384 threads, one CTA per SM); asking for more than was released hangs the consumers.
constexpr int kProducerRegs = 80;
constexpr int kConsumerRegs = 208;
// Named barriers: 1 and 2 the consumer warpgroups' own, 3 the producer's, kTurnBarrier + w consumer
// warpgroup w's ping-pong turn (both consumer warpgroups, 256 threads).
constexpr int kTurnBarrier = 4;
static_assert(128 * kProducerRegs + 256 * kConsumerRegs <= (65536 / kThreads) / 8 * 8 * kThreads,
              "register budget of the warpgroups");

template <int D>
struct WgmmaShape {
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kKVBytes = kKeys * D * 2;  // one stage of K (or V)
  // Per stage, the producer's table of the step's key rows: offsets into the cache in 16-byte
  // units (-1: no key), so that one page lookup per thread serves all the step's copies. 32 bits
  // reach 64 GB per layer's K (or V) cache.
  static constexpr int kTableOffset = kQBytes + 2 * kStages * kKVBytes;
  static constexpr int kBarrierOffset = kTableOffset + kStages * kKeys * 4;
  // Barriers (4 x kStages + 1) and the consumers' position reduction, then slack
  // to align the base to the 1024 bytes of a swizzle atom.
  static constexpr std::size_t kSmemBytes = kBarrierOffset + 256 + 1024;
};

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define CHUNKWISE_WGMMA 1
#endif

// Byte offset of 16-byte chunk c of row r in an R-row tile of 16-bit values: column blocks of 64
// values (128 bytes per row), each [R][128 bytes] with the chunks XOR-swizzled by r % 8, the
// layout wgmma reads with a 128-byte swizzle (atoms of 8 rows = 1024 bytes).
template <int R>
__device__ __forceinline__ int tile_offset(int r, int c) {
  return (c >> 3) * (R * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
}

// Shared memory matrix descriptor, 128-byte swizzle: start address, leading byte offset (between
// 64-value column blocks of an MN-major operand; unused for K-major), stride byte offset 1024
// (between 8-row groups).
__device__ __forceinline__ std::uint64_t sw128_desc(std::uint32_t addr, std::uint32_t lbo) {
  return static_cast<std::uint64_t>((addr & 0x3FFFFu) >> 4) | (static_cast<std::uint64_t>(lbo >> 4) << 16) |
         (static_cast<std::uint64_t>(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void mbar_init(std::uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(std::uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// Waits until the phase of the given parity has completed (parity 1 on a fresh barrier: at once).
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
  std::uint32_t done = 0;
  while (done == 0) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  }
}
// Arrives on the barrier once all of this thread's earlier cp.async copies have landed (the
// barrier's expected count includes this arrival).
__device__ __forceinline__ void cp_async_arrive(std::uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
// Makes shared memory written through the generic proxy (cp.async) visible to the async proxy
// (wgmma operands), after the barrier wait that saw it land.
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Arrives on a named barrier without waiting (it completes once `threads` threads have arrived at it
// or synced on it).
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

#if defined(CHUNKWISE_WGMMA)
#define CW_WGMMA_D32                                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define CW_WGMMA_OUT32(d)                                                                                  \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), \
      "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]),            \
      "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]),            \
      "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]),            \
      "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]),            \
      "+f"(d[7][3])
#define CW_WGMMA_D64                                                                                      \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, " \
  "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, "  \
  "%42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, "  \
  "%62, %63}"
#define CW_WGMMA_OUT64(d)                                                                                  \
  "+f"(d[0][0]), "+f"(d[0][1]), "+f"(d[0][2]), "+f"(d[0][3]), "+f"(d[1][0]), "+f"(d[1][1]), "+f"(d[1][2]), \
      "+f"(d[1][3]), "+f"(d[2][0]), "+f"(d[2][1]), "+f"(d[2][2]), "+f"(d[2][3]), "+f"(d[3][0]),            \
      "+f"(d[3][1]), "+f"(d[3][2]), "+f"(d[3][3]), "+f"(d[4][0]), "+f"(d[4][1]), "+f"(d[4][2]),            \
      "+f"(d[4][3]), "+f"(d[5][0]), "+f"(d[5][1]), "+f"(d[5][2]), "+f"(d[5][3]), "+f"(d[6][0]),            \
      "+f"(d[6][1]), "+f"(d[6][2]), "+f"(d[6][3]), "+f"(d[7][0]), "+f"(d[7][1]), "+f"(d[7][2]),            \
      "+f"(d[7][3]), "+f"(d[8][0]), "+f"(d[8][1]), "+f"(d[8][2]), "+f"(d[8][3]), "+f"(d[9][0]),            \
      "+f"(d[9][1]), "+f"(d[9][2]), "+f"(d[9][3]), "+f"(d[10][0]), "+f"(d[10][1]), "+f"(d[10][2]),         \
      "+f"(d[10][3]), "+f"(d[11][0]), "+f"(d[11][1]), "+f"(d[11][2]), "+f"(d[11][3]), "+f"(d[12][0]),      \
      "+f"(d[12][1]), "+f"(d[12][2]), "+f"(d[12][3]), "+f"(d[13][0]), "+f"(d[13][1]), "+f"(d[13][2]),      \
      "+f"(d[13][3]), "+f"(d[14][0]), "+f"(d[14][1]), "+f"(d[14][2]), "+f"(d[14][3]), "+f"(d[15][0]),      \
      "+f"(d[15][1]), "+f"(d[15][2]), "+f"(d[15][3])
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>  // at most N committed groups still pending
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// Pins register values at this point: the compiler may neither move their writes past it nor
// reuse the registers of an in-flight wgmma's operands before it.
template <int N>
__device__ __forceinline__ void reg_fence(float (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[i][e])::"memory");
  }
}
template <int N>
__device__ __forceinline__ void reg_fence(std::uint32_t (&d)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(d[i][e])::"memory");
  }
}

// d[64 x 128] (= or +=, scale_d) A[64 x 16] B[16 x 128], A and B K-major in shared memory.
template <class T>
__device__ __forceinline__ void wgmma_ss_n128(float (&d)[16][4], std::uint64_t da, std::uint64_t db,
                                              int scale_d) {
  if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " CW_WGMMA_D64
        ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : CW_WGMMA_OUT64(d)
        : "l"(da), "l"(db), "r"(scale_d));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " CW_WGMMA_D64 ", %64, %65, p, 1, 1, 0, 0;\n}\n"
        : CW_WGMMA_OUT64(d)
        : "l"(da), "l"(db), "r"(scale_d));
  }
}

// d[64 x N] += A[64 x 16] B[16 x N], A in registers (the m16n8k16 A fragment per warp), B
// MN-major in shared memory (N = 64 or 128).
template <class T, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N / 8][4], const std::uint32_t (&a)[4],
                                         std::uint64_t db) {
  if constexpr (N == 128 && std::is_same_v<T, bf16>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " CW_WGMMA_D64
        ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : CW_WGMMA_OUT64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
  } else if constexpr (N == 128) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " CW_WGMMA_D64
        ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
        : CW_WGMMA_OUT64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
  } else if constexpr (std::is_same_v<T, bf16>) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " CW_WGMMA_D32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : CW_WGMMA_OUT32(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
  } else {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " CW_WGMMA_D32
        ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
        : CW_WGMMA_OUT32(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
  }
}
#endif  // CHUNKWISE_WGMMA

// CTA b's (item, head). The items (longest first) go in groups of kItemGroup; within a group
// the heads go one after another, each over the group's items, so that the CTAs in flight share
// few KV heads. With the heads fastest (one item's 32 heads, then the next), a 16K prefill had all
// 8 KV heads in flight, 64 MB against the H200's 60 MB of L2, and ran at 540-567 or 588-593 TFLOP/s
// from one process to the next; groups of 8 items (4 KV heads in flight) mostly run at 586-589.
// Larger groups lose more of the longest-first order at the end (4K prefill: 8 items -2%, 16 -5%).
constexpr int kItemGroup = 8;
__device__ __forceinline__ void cta_work(int b, int n_items, int n_heads, int& item, int& h) {
  const int full = n_items / kItemGroup * kItemGroup;  // items in whole groups
  const int per_group = kItemGroup * n_heads;
  const int g = b / per_group;
  if (g * kItemGroup < full) {
    const int r = b - g * per_group;
    h = r / kItemGroup;
    item = g * kItemGroup + (r - h * kItemGroup);
  } else {
    const int rest = n_items - full;
    const int r = b - full * n_heads;
    h = r / rest;
    item = full + (r - h * rest);
  }
}

template <class T, int D>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_wgmma_kernel(const KernelArgs<T> a, const PrefillItem* __restrict__ items, int n_items) {
#if defined(CHUNKWISE_WGMMA)
  using S = WgmmaShape<D>;
  constexpr int kChunks = D / 8;               // 16-byte chunks per row
  constexpr int kRowsPerPass = 128 / kChunks;  // producer rows per pass
  constexpr int kKSteps = D / 16;              // k-steps of Q K^T
  constexpr int kPSteps = kKeys / 16;          // k-steps of P V
  constexpr int kSTiles = kKeys / 8;           // 8-column tiles of S per thread
  constexpr int kOTiles = D / 8;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const std::uint32_t raw_addr = smem_addr(smem_raw);
  unsigned char* const base = smem_raw + ((1024u - (raw_addr & 1023u)) & 1023u);
  const std::uint32_t sbase = smem_addr(base);
  const std::uint32_t sQ = sbase;
  auto sK = [&](int s) { return sbase + S::kQBytes + s * S::kKVBytes; };
  auto sV = [&](int s) { return sbase + S::kQBytes + (kStages + s) * S::kKVBytes; };
  // mbarriers: K and V stages filled (the producer's copies landed) and emptied (both consumer
  // warpgroups done with them), and the Q tile.
  const std::uint32_t bars = sbase + S::kBarrierOffset;
  auto full_k = [&](int s) { return bars + 8 * s; };
  auto full_v = [&](int s) { return bars + 8 * (kStages + s); };
  auto empty_k = [&](int s) { return bars + 8 * (2 * kStages + s); };
  auto empty_v = [&](int s) { return bars + 8 * (3 * kStages + s); };
  const std::uint32_t q_bar = bars + 8 * (4 * kStages);
  int* const red = reinterpret_cast<int*>(base + S::kBarrierOffset + 128);  // [2 warpgroups][4 warps][2]

  int item, h;
  cta_work(static_cast<int>(blockIdx.x), n_items, a.n_heads, item, h);
  const PrefillItem it = items[item];
  const int tid = static_cast<int>(threadIdx.x);
  const PrefillSteps<kKeys> steps(a, it, h);
  const int n_steps = steps.n_steps;

  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full_k(s), 128);
      mbar_init(full_v(s), 128);
      mbar_init(empty_k(s), 256);
      mbar_init(empty_v(s), 256);
    }
    mbar_init(q_bar, 128);
  }
  __syncthreads();

  if (tid < 128) {
    // ---- producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs) : "memory");
    const int c = tid % kChunks;
    const int r0 = tid / kChunks;
    const std::int32_t* const seq_pages = a.pages + __ldg(a.page_start + it.seq);
    const int kvh_off = (h / a.group) * D;
#pragma unroll
    for (int i = 0; i < kRows / kRowsPerPass; ++i) {
      const int r = r0 + i * kRowsPerPass;
      const bool valid = r < it.n_rows;
      const T* src =
          a.q + (static_cast<std::int64_t>(it.row_begin + (valid ? r : 0)) * a.n_heads + h) * D + c * 8;
      cp_async16(base + tile_offset<kRows>(r, c), src, valid);
    }
    cp_async_arrive(q_bar);
    std::int32_t* const table = reinterpret_cast<std::int32_t*>(base + S::kTableOffset);
    // Producer thread t finds key row t of step j (one page lookup), then the producer warpgroup
    // copies the rows of K, then of V, 16 bytes per thread and row, coalesced along the row.
    auto fill_table = [&](int j, std::int32_t* rows) {
      int j0, gather, count;
      steps.step(j, j0, gather, count);
      int p;
      bool valid;
      if (gather < 0) {
        p = j0 + tid;
        valid = p >= 0 && p < it.kv_end;
      } else {
        valid = tid < count;
        p = valid ? __ldg(a.column_idx + gather + tid) : -1;
        valid = valid && p >= 0 && p <= it.max_pos;
      }
      rows[tid] = valid ? static_cast<std::int32_t>(kv_offset(a, seq_pages, p, kvh_off) >> 3) : -1;
    };
    // This thread's 16-byte chunk of each of its rows: the same offset in every stage (the
    // swizzle depends on r % 8, which is r0 % 8 for all of them).
    const int dst0 = tile_offset<kKeys>(r0, c);
    constexpr int kPasses = kKeys / kRowsPerPass;
    auto load = [&](const T* src, std::uint32_t stage, const std::int32_t(&off)[kPasses]) {
      unsigned char* const dst = base + (stage - sbase) + dst0;
#pragma unroll
      for (int i = 0; i < kPasses; ++i)
        cp_async16(dst + i * kRowsPerPass * 128, src + static_cast<std::int64_t>(max(off[i], 0)) * 8 + c * 8,
                   off[i] >= 0);
    };
    // The barriers track the copies themselves (cp.async.mbarrier.arrive): up to kStages steps in
    // flight, the producer never waits for its own loads (as FlashAttention-3's paged, non-TMA
    // path does).
    for (int j = 0; j < n_steps; ++j) {
      const int s = j % kStages;
      const std::uint32_t parity = ((j / kStages) & 1) ^ 1;
      std::int32_t* const rows = table + s * kKeys;
      // A table slot is rewritten kStages steps later: every producer thread has passed this
      // step's barrier by then, after its last read of the slot.
      fill_table(j, rows);
      named_barrier(3, 128);
      std::int32_t off[kPasses];
#pragma unroll
      for (int i = 0; i < kPasses; ++i) off[i] = rows[r0 + i * kRowsPerPass];
      mbar_wait(empty_k(s), parity);
      load(a.k, sK(s), off);
      cp_async_arrive(full_k(s));
      mbar_wait(empty_v(s), parity);
      load(a.v, sV(s), off);
      cp_async_arrive(full_v(s));
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    return;
  }

  // ---- consumers
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs) : "memory");
  const int ct = tid - 128;
  const int cw = ct >> 7;  // consumer warpgroup: rows [64 cw, 64 cw + 64)
  const int wt = ct & 127;
  const int warp = wt >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int last_row = it.n_rows - 1;
  const bool active = cw * 64 <= last_row;
  const int r_lo = cw * 64 + warp * 16 + g, r_hi = r_lo + 8;
  const int pos_lo = __ldg(a.q_pos + it.row_begin + min(r_lo, last_row));
  const int pos_hi = __ldg(a.q_pos + it.row_begin + min(r_hi, last_row));
  int wmin = min(pos_lo, pos_hi), wmax = max(pos_lo, pos_hi);
#pragma unroll
  for (int x = 1; x < 32; x <<= 1) {
    wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, x));
    wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, x));
  }
  // The warpgroup's range: a step is skipped (or left unmasked) by all its warps together, as
  // wgmma is warpgroup-wide.
  if (lane == 0) {
    red[(cw * 4 + warp) * 2] = wmin;
    red[(cw * 4 + warp) * 2 + 1] = wmax;
  }
  named_barrier(1 + cw, 128);
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    wmin = min(wmin, red[(cw * 4 + w) * 2]);
    wmax = max(wmax, red[(cw * 4 + w) * 2 + 1]);
  }

  float o[kOTiles][4];
#pragma unroll
  for (int n = 0; n < kOTiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float sacc[kSTiles][4];
#pragma unroll
  for (int n = 0; n < kSTiles; ++n) sacc[n][0] = sacc[n][1] = sacc[n][2] = sacc[n][3] = 0.0f;
  std::uint32_t pa[kPSteps][4];
  float m[2] = {kNegInf, kNegInf};
  float l[2] = {0.0f, 0.0f};
  const float sl2 = a.scale_log2;
  // Steps this warpgroup computes: dense steps past its last query position are a suffix; its
  // other steps are still waited for and released, so that the stage barriers count every step.
  int n_active = 0;
  if (active) {
    n_active =
        steps.sparse ? n_steps : (wmax < it.kv_begin ? 0 : min(n_steps, (wmax - it.kv_begin) / kKeys + 1));
    mbar_wait(q_bar, 0);
    fence_proxy_async();
  }

  const std::uint64_t dq = sw128_desc(sQ + cw * (64 * 128), 16);  // this warpgroup's Q rows
  auto issue_s = [&](int s) {                                     // S = Q K^T over the stage's keys
    reg_fence(sacc);
    wgmma_fence();
    const std::uint64_t dk = sw128_desc(sK(s), 16);
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
      // Start addresses move in 16-byte units within the descriptor's low bits (no carry: shared
      // memory addresses stay below 2^18).
      wgmma_ss_n128<T>(sacc, dq + (((kk >> 2) * (kRows * 128) + (kk & 3) * 32) >> 4),
                       dk + (((kk >> 2) * (kKeys * 128) + (kk & 3) * 32) >> 4), kk > 0 ? 1 : 0);
    }
    wgmma_commit();
  };
  auto issue_pv = [&](int s) {  // O += P V, P (rounded to T) from registers
    reg_fence(pa);
    reg_fence(o);
    wgmma_fence();
    const std::uint64_t dv = sw128_desc(sV(s), kKeys * 128);
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) wgmma_rs<T, D>(o, pa[kk], dv + ((kk * 16 * 128) >> 4));
    wgmma_commit();
  };
  // Causal / validity mask of step j's scores, only where some key may be invisible to some row.
  auto mask = [&](int j) {
    int j0, gather, count;
    steps.step(j, j0, gather, count);
    if (!(gather >= 0 || j0 + kKeys - 1 > wmin || j0 + kKeys > it.kv_end || j0 < 0)) return;
#pragma unroll
    for (int n = 0; n < kSTiles; ++n) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = n * 8 + t4 * 2 + e;
        int kp;
        if (gather < 0) {
          kp = j0 + col;
          if (kp >= it.kv_end || kp < 0) kp = INT_MAX;
        } else {
          kp = col < count ? __ldg(a.column_idx + gather + col) : -1;
          if (kp < 0 || kp > it.max_pos) kp = INT_MAX;
        }
        if (kp > pos_lo) sacc[n][e] = kNegInf;
        if (kp > pos_hi) sacc[n][2 + e] = kNegInf;
      }
    }
  };
  // The S accumulator layout is the A fragment's: P packs in place.
  auto pack_p = [&] {
#pragma unroll
    for (int kk = 0; kk < kPSteps; ++kk) {
      pa[kk][0] = pack2<T>(sacc[2 * kk][0], sacc[2 * kk][1]);
      pa[kk][1] = pack2<T>(sacc[2 * kk][2], sacc[2 * kk][3]);
      pa[kk][2] = pack2<T>(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
      pa[kk][3] = pack2<T>(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
    }
  };

  auto wait_k = [&](int j) {
    mbar_wait(full_k(j % kStages), (j / kStages) & 1);
    fence_proxy_async();
  };
  auto wait_v = [&](int j) {
    mbar_wait(full_v(j % kStages), (j / kStages) & 1);
    fence_proxy_async();
  };
  // The ping-pong schedule. Both warpgroups take exactly one turn per step of the CTA's list
  // (n_steps, the same for both), computed or not: warpgroup w waits on barrier kTurnBarrier + w
  // (take_turn), issues, then arrives on the other's (pass_turn). Warpgroup 1 arrives on warpgroup
  // 0's barrier once before its first turn and not after its last, so every barrier phase completes
  // (n_steps arrivals and syncs on each barrier) and turn j of warpgroup 1 follows turn j of
  // warpgroup 0, which follows turn j - 1 of warpgroup 1. Before turn j a warpgroup waits for K of
  // step j and V of step j - 1, which the producer loads once both warpgroups released step j - 3
  // (by their turn j - 2): every wait is on earlier turns, so none can close a cycle.
  const int own_turn = kTurnBarrier + cw, other_turn = kTurnBarrier + (cw ^ 1);
  auto take_turn = [&] { named_barrier(own_turn, 256); };
  auto pass_turn = [&](int j) {
    if (cw == 0 || j + 1 < n_steps) named_barrier_arrive(other_turn, 256);
  };
  if (cw == 1 && n_steps > 0) named_barrier_arrive(other_turn, 256);
  // Turn j issues Q K^T of step j and P V of step j - 1; the softmax of step j then runs under the
  // other warpgroup's turn. The last step's P V runs after the turns.
  // (The first step, with no P V, is peeled: a wgmma or wgmma wait on a conditional path makes
  // ptxas serialise the kernel's wgmma.)
  if (n_active > 0) {
    wait_k(0);
    take_turn();
    issue_s(0);
    pass_turn(0);
    wgmma_wait<0>();
    reg_fence(sacc);
    mbar_arrive(empty_k(0));
    mask(0);
    softmax_update(sacc, o, m, l, sl2);
    pack_p();
  }
  for (int j = 1; j < n_active; ++j) {
    const int s = j % kStages;
    const int sp = (j - 1) % kStages;
    wait_v(j - 1);
    wait_k(j);
    take_turn();
    issue_s(s);
    issue_pv(sp);
    pass_turn(j);
    wgmma_wait<1>();  // Q K^T (committed first) done, P V may still run
    reg_fence(sacc);
    mbar_arrive(empty_k(s));
    mask(j);
    wgmma_wait<0>();  // P V done before the softmax rescales O and P is repacked
    reg_fence(o);
    reg_fence(pa);
    mbar_arrive(empty_v(sp));
    softmax_update(sacc, o, m, l, sl2);
    pack_p();
  }
  if (n_active > 0) {
    const int sp = (n_active - 1) % kStages;
    wait_v(n_active - 1);
    issue_pv(sp);
    wgmma_wait<0>();
    reg_fence(o);
    reg_fence(pa);
    mbar_arrive(empty_v(sp));
  }
  for (int j = n_active; j < n_steps; ++j) {
    take_turn();
    pass_turn(j);
    mbar_wait(full_k(j % kStages), (j / kStages) & 1);
    mbar_arrive(empty_k(j % kStages));
    mbar_wait(full_v(j % kStages), (j / kStages) & 1);
    mbar_arrive(empty_v(j % kStages));
  }
  if (!active) return;

  float inv[2];
  finish_rows(l, inv);

  if (it.partial_base < 0) {
    // Stage the warpgroup's 64 rows (as T) in its own rows of the Q tile (its products are done),
    // then 16-byte coalesced stores.
#pragma unroll
    for (int n = 0; n < kOTiles; ++n) {
      *reinterpret_cast<std::uint32_t*>(base + tile_offset<kRows>(r_lo, n) + t4 * 4) =
          pack2<T>(o[n][0] * inv[0], o[n][1] * inv[0]);
      *reinterpret_cast<std::uint32_t*>(base + tile_offset<kRows>(r_hi, n) + t4 * 4) =
          pack2<T>(o[n][2] * inv[1], o[n][3] * inv[1]);
    }
    named_barrier(1 + cw, 128);
#pragma unroll
    for (int i = 0; i < 64 * kChunks / 128; ++i) {
      const int idx = wt + i * 128;
      const int rr = cw * 64 + idx / kChunks;
      const int ch = idx % kChunks;
      if (rr <= last_row) {
        T* dst = a.out + (static_cast<std::int64_t>(it.row_begin + rr) * a.n_heads + h) * D + ch * 8;
        *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(base + tile_offset<kRows>(rr, ch));
      }
    }
  } else {
    write_partial_rows(a, it, h, r_lo, o, m, l, inv, t4);
  }
#endif  // CHUNKWISE_WGMMA
}

// Writes 1 when this build's code for the running device holds the wgmma kernel.
__global__ void wgmma_probe(int* out) {
#if defined(CHUNKWISE_WGMMA)
  *out = 1;
#else
  *out = 0;
#endif
}

template <class T, int D>
void launch_t(const KernelArgs<T>& a, const PrefillItem* items, int n_items, cudaStream_t stream) {
  const auto ctas = static_cast<unsigned>(n_items) * static_cast<unsigned>(a.n_heads);
  prefill_wgmma_kernel<T, D><<<ctas, kThreads, WgmmaShape<D>::kSmemBytes, stream>>>(a, items, n_items);
  check_launch("attention prefill kernel (wgmma)");
}

template <class T, int D>
void prepare_t() {
  check_cuda(cudaFuncSetAttribute(prefill_wgmma_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(WgmmaShape<D>::kSmemBytes)),
             "cudaFuncSetAttribute(attention prefill, wgmma)");
}

}  // namespace

bool wgmma_prefill_available() {
  // Per device: -1 not probed yet, else 0 or 1.
  static std::mutex mu;
  static std::vector<int> probed;
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  const std::lock_guard<std::mutex> lock(mu);
  if (static_cast<std::size_t>(dev) >= probed.size()) probed.resize(static_cast<std::size_t>(dev) + 1, -1);
  int& known = probed[static_cast<std::size_t>(dev)];
  if (known < 0) {
    int major = 0;
    check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
               "cudaDeviceGetAttribute");
    known = 0;
    if (major == 9) {
      DeviceBuffer<int> flag(1);
      int host = 0;
      wgmma_probe<<<1, 1>>>(flag.get());
      check_launch("wgmma probe");
      check_cuda(cudaMemcpy(&host, flag.get(), sizeof(int), cudaMemcpyDeviceToHost), "wgmma probe");
      known = host;
    }
  }
  return known == 1;
}

void prepare_prefill_wgmma(int head_dim) {
  if (head_dim == 64) {
    prepare_t<bf16, 64>();
    prepare_t<f16, 64>();
  } else {
    prepare_t<bf16, 128>();
    prepare_t<f16, 128>();
  }
}

template <class T>
void launch_prefill_wgmma(const KernelArgs<T>& a, const PrefillItem* items, int n_items, int head_dim,
                          cudaStream_t stream) {
  if (n_items <= 0) return;
  head_dim == 64 ? launch_t<T, 64>(a, items, n_items, stream) : launch_t<T, 128>(a, items, n_items, stream);
}
template void launch_prefill_wgmma(const KernelArgs<bf16>&, const PrefillItem*, int, int, cudaStream_t);
template void launch_prefill_wgmma(const KernelArgs<f16>&, const PrefillItem*, int, int, cudaStream_t);

}  // namespace chunkwise::cuda::attn
