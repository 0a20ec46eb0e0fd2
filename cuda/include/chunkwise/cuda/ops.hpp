// Element-wise, row-wise and sampling kernels of the CUDA backend. Every launcher takes raw device
// pointers with explicit shapes (row-major, contiguous rows) and enqueues its work on `stream`
// without synchronising, so a step can be captured in a CUDA graph. Shapes are checked on the host
// (Error(kInvalidArgument)); a bad launch throws Error(kBackend). Zero rows is a no-op.
//
// Storage: T (bf16 or f16, the only two instantiations) for weights, the KV cache and GEMM inputs;
// fp32 for the residual stream and GEMM outputs. All arithmetic is fp32. Where the shapes allow (a
// row length that is a multiple of 8 and 16-byte aligned pointers) rows move in 16-byte vectors;
// other shapes take a scalar path.
// Each op matches its CPU reference in chunkwise/backend/cpu/ops.hpp (tests/cuda/test_ops.cpp).
//
// C++17 and framework-free on purpose: this header is included by plain C++ code and by nvcc.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "chunkwise/cuda/common.hpp"

namespace chunkwise::cuda {

// out[i, :] = table[ids[i], :] as fp32 (cpu::embed). table is [vocab, dim].
// Device-side guard: an id outside [0, vocab) writes a row of zeros and sets *bad_id_flag = 1 (when
// the flag is non-null). The kernel only ever sets the flag: clear it before the launch if you read
// it. The host is expected to have checked the ids already (CudaBackend does); the flag catches a
// corrupted upload without reading out of bounds.
template <class T>
void embed(const T* table, std::int64_t vocab, std::int64_t dim, const std::int32_t* ids, std::int64_t n,
           float* out, int* bad_id_flag, cudaStream_t stream);

// Fused residual add and RMSNorm over rows of x [rows, dim] (cpu::rms_norm):
//   if residual != nullptr: x += residual (in place, fp32; residual may equal x);
//   y = weight * (x * 1/sqrt(mean(x^2) + eps)), stored as T. y must not overlap x.
// One CTA (one warp for short rows) per row.
template <class T>
void add_rms_norm(float* x, const float* residual, const T* weight, std::int64_t rows, std::int64_t dim,
                  float eps, T* y, cudaStream_t stream);
// The same with an fp32 output (y may not overlap x).
template <class T>
void rms_norm_f32(float* x, const float* residual, const T* weight, std::int64_t rows, std::int64_t dim,
                  float eps, float* y, cudaStream_t stream);

// RoPE and the KV-cache write of one layer (cpu::rope on q and k, then cpu::write_kv).
// qkv rows [rows, (n_heads + 2*n_kv_heads) * head_dim] fp32 are [q | k | v], the output of one fused
// QKV GEMM. Rotate-half RoPE (HF convention: pairs (i, i + head_dim/2), angle = positions[r] *
// inv_freq[i] as one fp32 product, cos/sin in fp32) is applied to q and k.
//   q_out   [rows, n_heads, head_dim] T
//   k_cache, v_cache: this layer's cache [num_blocks, block_size, n_kv_heads, head_dim] T; row r
//   goes to slot = block * block_size + offset = slots[r], i.e. element
//   slot * n_kv_heads * head_dim + head * head_dim + i. A negative slot skips the K/V write of that
//   row (device-side guard; the host validates slots).
// inv_freq: device array of head_dim/2 floats (cpu::rope_inv_freq). head_dim must be even and at
// most 512; block_size only has to be positive (the address depends on the slot alone).
template <class T>
void rope_write_kv(const float* qkv, std::int64_t rows, int n_heads, int n_kv_heads, int head_dim,
                   const std::int32_t* positions, const float* inv_freq, const std::int64_t* slots, T* q_out,
                   T* k_cache, T* v_cache, int block_size, cudaStream_t stream);

// out[r, i] = silu(gate[r, i]) * up[r, i] as T (cpu::swiglu), where gate_up rows
// [rows, 2*ffn] fp32 are [gate | up] (one fused gate/up GEMM). out is [rows, ffn].
template <class T>
void swiglu(const float* gate_up, std::int64_t rows, std::int64_t ffn, T* out, cudaStream_t stream);

// out[i, :] = x[rows[i], :] for the n rows whose logits are wanted (T: bf16, f16), or the rows a
// selective recompute keeps (its queries, T: bf16, f16; its residual, T: float); x and out have dim columns.
// The row indices must be valid rows of x (a negative one writes zeros).
template <class T>
void gather_rows(const T* x, std::int64_t dim, const std::int32_t* rows, std::int64_t n, T* out,
                 cudaStream_t stream);

// ---- chunk reuse ------------------------------------------------------------------------------

// deviation[r] = sum over the kv_dim elements of (k_r - k_cache[slots[r]])^2 (summed in double):
// k_r the K part of qkv row r after RoPE at positions[r], rotated exactly as rope_write_kv() does,
// compared with what the cache holds at the row's slot before rope_write_kv() overwrites it (a
// selective recompute's check layer). Arguments as rope_write_kv(); a negative slot gives 0.
template <class T>
void key_deviation(const float* qkv, std::int64_t rows, int n_heads, int n_kv_heads, int head_dim,
                   const std::int32_t* positions, const float* inv_freq, const std::int64_t* slots,
                   const T* k_cache, float* deviation, cudaStream_t stream);

// Chunk KV in ChunkKv's layout: `layers` layers of K [n_tokens, kv_dim] then V [n_tokens, kv_dim].
// The cache side is CudaBackend's: layer l's K cache at cache + 2 * l * layer_elems, its V cache at
// cache + (2 * l + 1) * layer_elems, token i at slot slots[i] (every slot valid; not checked).
//
// place_chunk_kv writes the chunks' KV into the cache: n_tokens tokens in all, token i (i in
// [0, n_tokens)) of the placement c with c.first <= i < c.first + c.n_tokens (chunks sorted by first,
// chunks[0].first == 0, covering [0, n_tokens) without gaps; not checked) at slot slots[i]; layers
// [first_layer, first_layer + layers) of each c.src (S: float, or T itself; device memory or mapped
// pinned host memory, read over the host link) and of `cache`. Keys are rotated by a fixed angle
// per pair: c.rotation indexes head_dim doubles of `rotations`, cos then sin of delta * inv_freq[i]
// for i < head_dim / 2 (rotate-half pairs, as chunkwise::rotate_keys), applied in double before one
// rounding to fp32 and one to T; a negative c.rotation copies the keys unrotated. Values are copied
// (rounded to T when S is float). One launch places any number of chunks.
struct ChunkPlacement {
  const void* src;  // [layers][K|V][n_tokens, kv_dim] of S
  std::int64_t n_tokens;
  std::int32_t first;     // its first token's index in slots
  std::int32_t rotation;  // offset of its cos|sin in rotations, or -1
};
template <class S, class T>
void place_chunk_kv(const ChunkPlacement* chunks, int n_chunks, std::int64_t n_tokens, int first_layer,
                    int layers, int n_kv_heads, int head_dim, const double* rotations,
                    const std::int64_t* slots, T* cache, std::int64_t layer_elems, cudaStream_t stream);
// gather_chunk_kv is the reverse, without rotation: the cache's K and V at slots, widened to fp32.
template <class T>
void gather_chunk_kv(const T* cache, int layers, std::int64_t layer_elems, std::int64_t n_tokens, int kv_dim,
                     const std::int64_t* slots, float* out, cudaStream_t stream);

// out[p, :] = the cache row of token p as fp32, for p in [0, n_tokens): one layer's K (or V) cache
// [num_blocks, block_size, n_kv_heads, head_dim] T read through a page table, token p at block
// pages[p / block_size], offset p % block_size. out is [n_tokens, n_kv_heads * head_dim], contiguous;
// pages a device array of at least ceil(n_tokens / block_size) blocks (not checked). Exact.
template <class T>
void gather_paged_f32(const T* cache, int block_size, int n_kv_heads, int head_dim, const std::int32_t* pages,
                      std::int64_t n_tokens, float* out, cudaStream_t stream);

// Conversions of n contiguous elements: fp32 -> T rounds to nearest even (fp16 overflows to inf);
// T -> fp32 is exact.
template <class T>
void convert(const float* x, std::int64_t n, T* y, cudaStream_t stream);
template <class T>
void convert(const T* x, std::int64_t n, float* y, cudaStream_t stream);

// ---- sampling ---------------------------------------------------------------------------------

// One row's sampling parameters, as chunkwise::SampleRow (SamplingParams + step) in device memory.
struct DeviceSampleRow {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // 1 = off
  std::uint64_t seed = 0;
  std::uint64_t step = 0;  // index of the token being generated within its request
};
using SamplingParamsDevice = DeviceSampleRow;

// Bytes of device workspace sample_tokens() needs for rows x vocab (currently 0: every row is
// sampled by one CTA in shared memory; query it anyway, it may grow).
std::size_t sample_workspace_bytes(std::int64_t rows, int vocab);

// out_tokens[r] = chunkwise::sample(logits + r*vocab, vocab, params[r], params[r].step), drawn on
// the device, one CTA per row; logits [rows, vocab] fp32, params [rows].
//
// Exactness against the host sampler (src/core/sampling.cpp):
//  * Greedy rows (temperature 0 or top_k 1) and the host's fallbacks (no finite candidate, a +inf
//    logit) are the argmax with the host's rules (NaN never wins, ties to the lowest id): always
//    identical.
//  * Sampled rows keep exactly the host's candidate set: NaN and -inf excluded, top-k by
//    (logit desc, id asc), the nucleus as the shortest head of that order reaching top_p of the mass.
//    The weights are bit-identical to the host's float exp((logit - max) * (1/temperature)): the
//    kernel evaluates glibc's expf algorithm (x86-64 FMA variant, glibc >= 2.27) step by step;
//    sampling_expf() below exposes it so the tests can check it against the host's libm.
//    The sums are exact: each weight is turned into a 128-bit fixed-point number (2^-96 units, so a
//    weight below 2^-73 loses low-order bits) and sums, the top_p target and the draw
//    u = uniform(seed, step) * mass are exact integer arithmetic. The host adds the same weights in
//    double, in a fixed sequential order, so its sums carry rounding errors of about 1e-16 times
//    the number of terms. The two pick different tokens only when the host's draw (or its top-p
//    cumulative mass) lies within that rounding error of a boundary between two tokens: about
//    1e-12 per row for a 128k vocabulary. The device result is deterministic (integer arithmetic,
//    no atomics on floats) and does not depend on the batch.
//  * On a host whose libm expf is not glibc's (e.g. another libc or CPU architecture) weights may
//    differ by an ulp and boundary cases widen to about 1e-7 relative.
//  * Parameters are expected to be valid (chunkwise::validate); an invalid row gets token -1. A
//    temperature so small that 1/temperature overflows gives the argmax (the host's arithmetic
//    then degenerates into NaN weights).
// workspace may be null when sample_workspace_bytes() is 0.
void sample_tokens(const float* logits, std::int64_t rows, int vocab, const DeviceSampleRow* params,
                   std::int32_t* out_tokens, void* workspace, std::size_t workspace_bytes,
                   cudaStream_t stream);

// y[i] = the weight function sample_tokens() uses: the same value as glibc's expf(x[i]) on x86-64
// (FMA variant). Exposed for tests.
void sampling_expf(const float* x, std::int64_t n, float* y, cudaStream_t stream);

}  // namespace chunkwise::cuda
