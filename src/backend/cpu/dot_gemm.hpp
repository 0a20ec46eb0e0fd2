// A batch-invariant GEMM for y = x * w^T: every y[i][j] is the same sequence of fused
// multiply-adds along k (vector lanes, then one fixed horizontal sum), whatever m is, which
// tile the row falls into and how the columns are split across threads. Eigen's GEMM picks its
// blocking (and a GEMV path for m == 1) from the shape, so a row's logits would change with the
// batch it ran in; here they cannot.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace chunkwise::cpu::detail {

#if defined(__AVX512F__)
constexpr int kLanes = 16;
using Vec = __m512;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vload_tail(const float* p, int n) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1u), p);
}
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(Vec v) {
  // Fixed tree: halves, then quarters, ... (not _mm512_reduce_add_ps, whose order is the compiler's).
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 e = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(e, _mm_shuffle_ps(e, e, 1)));
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int kLanes = 8;
using Vec = __m256;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vload_tail(const float* p, int n) {
  alignas(32) float buf[8] = {};
  std::copy(p, p + n, buf);
  return _mm256_load_ps(buf);
}
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(Vec v) {
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 e = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(e, _mm_shuffle_ps(e, e, 1)));
}
#else
#error "chunkwise's CPU GEMM needs AVX2+FMA or AVX-512 (configure with -DCHUNKWISE_CPU_ARCH=native)"
#endif

// R rows of x times C rows of w, all dot products over the full k.
template <int R, int C>
inline void dot_tile(const float* x, std::int64_t ldx, const float* w, std::int64_t ldw, std::int64_t k, float* y,
                     std::int64_t ldy) {
  Vec acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = vzero();
  std::int64_t p = 0;
  for (; p + kLanes <= k; p += kLanes) {
    Vec wv[C];
    for (int c = 0; c < C; ++c) wv[c] = vload(w + c * ldw + p);
    for (int r = 0; r < R; ++r) {
      const Vec xv = vload(x + r * ldx + p);
      for (int c = 0; c < C; ++c) acc[r][c] = vfma(xv, wv[c], acc[r][c]);
    }
  }
  if (p < k) {
    const int tail = static_cast<int>(k - p);
    Vec wv[C];
    for (int c = 0; c < C; ++c) wv[c] = vload_tail(w + c * ldw + p, tail);
    for (int r = 0; r < R; ++r) {
      const Vec xv = vload_tail(x + r * ldx + p, tail);
      for (int c = 0; c < C; ++c) acc[r][c] = vfma(xv, wv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) y[r * ldy + c] = vsum(acc[r][c]);
}

// Rows [0, m) of x times rows [n0, n1) of w. Blocks of w that stay in L2 are swept by tiles of
// 4 rows of x; the row remainder uses smaller tiles doing the identical arithmetic per element.
inline void dot_gemm_columns(const float* x, std::int64_t m, std::int64_t k, const float* w, std::int64_t n0,
                             std::int64_t n1, float* y, std::int64_t ldy) {
  constexpr int kRows = 4, kCols = 4;
  constexpr std::int64_t kColBlock = 64;
  for (std::int64_t jb = n0; jb < n1; jb += kColBlock) {
    const std::int64_t je = std::min(n1, jb + kColBlock);
    for (std::int64_t i = 0; i < m; i += kRows) {
      const std::int64_t rows = std::min<std::int64_t>(kRows, m - i);
      std::int64_t j = jb;
      for (; j + kCols <= je; j += kCols) {
        const float* xi = x + i * k;
        const float* wj = w + j * k;
        float* yij = y + i * ldy + j;
        switch (rows) {
          case 4: dot_tile<4, kCols>(xi, k, wj, k, k, yij, ldy); break;
          case 3: dot_tile<3, kCols>(xi, k, wj, k, k, yij, ldy); break;
          case 2: dot_tile<2, kCols>(xi, k, wj, k, k, yij, ldy); break;
          default: dot_tile<1, kCols>(xi, k, wj, k, k, yij, ldy); break;
        }
      }
      for (; j < je; ++j)
        for (std::int64_t r = 0; r < rows; ++r) dot_tile<1, 1>(x + (i + r) * k, k, w + j * k, k, k, y + (i + r) * ldy + j, ldy);
    }
  }
}

}  // namespace chunkwise::cpu::detail
