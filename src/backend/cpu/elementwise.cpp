// Row-wise and element-wise ops: RMSNorm, RoPE, SwiGLU, embedding lookup.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <string>
#include <vector>

#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"
#include "ops_detail.hpp"

namespace chunkwise::cpu {

void rms_norm(const float* x, const float* weight, std::int64_t rows, std::int64_t dim, float eps, float* y) {
  check(rows >= 0 && dim > 0, ErrorCode::kInvalidArgument, "rms_norm: need rows >= 0 and dim > 0");
  const int threads = detail::threads_for(rows * dim * 4);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    // HF upcasts to fp32 and takes mean(x^2) with a pairwise fp32 sum; a double sum rounded once to
    // float is at least as accurate and does not depend on the summation order.
    double sum = 0.0;
    for (std::int64_t i = 0; i < dim; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float variance = static_cast<float>(sum / static_cast<double>(dim));
    const float inv = 1.0f / std::sqrt(variance + eps);
    // Same rounding order as HF: weight * (x * rsqrt(var + eps)).
    for (std::int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

std::vector<float> rope_inv_freq(int head_dim, float theta, const RopeScaling& scaling) {
  if (!(head_dim > 0 && head_dim % 2 == 0)) {
    throw Error(ErrorCode::kInvalidArgument,
                "rope_inv_freq: head_dim must be positive and even, got " + std::to_string(head_dim));
  }
  check(std::isfinite(theta) && theta > 0.0f, ErrorCode::kInvalidArgument,
        "rope_inv_freq: theta must be positive and finite");
  const int half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<std::size_t>(half));
  // HF _compute_default_rope_parameters, all in float32:
  // 1.0 / (base ** (arange(0, dim, 2).float() / dim)).
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[static_cast<std::size_t>(i)] = 1.0f / std::pow(theta, exponent);
  }
  if (!scaling.enabled) return inv_freq;

  check(scaling.factor > 0.0f && scaling.low_freq_factor > 0.0f &&
            scaling.high_freq_factor > scaling.low_freq_factor && scaling.original_max_position > 0,
        ErrorCode::kInvalidArgument,
        "rope_inv_freq: Llama-3 scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and "
        "original_max_position > 0");
  // HF _compute_llama3_parameters. Python scalars stay double there until they meet a float32 tensor;
  // `scalar / tensor` is tensor.reciprocal() * scalar, so the float ops below follow that order.
  const double old_ctx = scaling.original_max_position;
  // torch compares a float32 tensor with a Python float after casting the scalar to float32.
  const auto low_freq_wavelen = static_cast<float>(old_ctx / scaling.low_freq_factor);
  const auto high_freq_wavelen = static_cast<float>(old_ctx / scaling.high_freq_factor);
  const auto two_pi = static_cast<float>(2.0 * std::numbers::pi);
  const auto old_ctx_f = static_cast<float>(old_ctx);
  const auto low_f = scaling.low_freq_factor;
  const auto span_f =
      static_cast<float>(static_cast<double>(scaling.high_freq_factor) - scaling.low_freq_factor);
  for (float& f : inv_freq) {
    const float wavelen = (1.0f / f) * two_pi;
    if (wavelen < high_freq_wavelen) continue;  // high frequency: unchanged
    if (wavelen > low_freq_wavelen) {           // low frequency: divided by factor
      f = f / scaling.factor;
      continue;
    }
    const float smooth = ((1.0f / wavelen) * old_ctx_f - low_f) / span_f;
    f = (1.0f - smooth) * f / scaling.factor + smooth * f;
  }
  return inv_freq;
}

void rope(float* x, std::int64_t rows, int n_heads, int head_dim, const std::int32_t* positions,
          std::span<const float> inv_freq) {
  check(rows >= 0 && n_heads > 0 && head_dim > 0 && head_dim % 2 == 0, ErrorCode::kInvalidArgument,
        "rope: need rows >= 0, n_heads > 0 and an even head_dim > 0");
  const int half = head_dim / 2;
  if (inv_freq.size() != static_cast<std::size_t>(half)) {
    throw Error(ErrorCode::kInvalidArgument, "rope: inv_freq must have head_dim/2 = " + std::to_string(half) +
                                                 " entries, got " + std::to_string(inv_freq.size()));
  }
  const std::int64_t row_size = static_cast<std::int64_t>(n_heads) * head_dim;
  const int threads = detail::threads_for(rows * (row_size + half * 16));
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> cos_v(static_cast<std::size_t>(half));
    std::vector<float> sin_v(static_cast<std::size_t>(half));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      // HF: freqs = inv_freq.float() @ position.float() (one float product), then cos/sin in float32.
      const auto pos = static_cast<float>(positions[r]);
      for (int i = 0; i < half; ++i) {
        const float angle = inv_freq[static_cast<std::size_t>(i)] * pos;
        cos_v[static_cast<std::size_t>(i)] = std::cos(angle);
        sin_v[static_cast<std::size_t>(i)] = std::sin(angle);
      }
      float* xr = x + r * row_size;
      for (int h = 0; h < n_heads; ++h) {
        float* xh = xr + static_cast<std::int64_t>(h) * head_dim;
        for (int i = 0; i < half; ++i) {
          const float x1 = xh[i];
          const float x2 = xh[i + half];
          const float c = cos_v[static_cast<std::size_t>(i)];
          const float s = sin_v[static_cast<std::size_t>(i)];
          // q * cos + rotate_half(q) * sin, with rotate_half(q) = cat(-x2, x1).
          xh[i] = x1 * c + (-x2) * s;
          xh[i + half] = x2 * c + x1 * s;
        }
      }
    }
  }
}

void swiglu(const float* gate, const float* up, std::int64_t n, float* out) {
  check(n >= 0, ErrorCode::kInvalidArgument, "swiglu: negative size");
  const int threads = detail::threads_for(n * 16);
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (std::int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void embed(const float* table, std::int64_t vocab, std::int64_t dim, const TokenId* ids, std::int64_t n,
           float* out) {
  check(vocab >= 0 && dim >= 0 && n >= 0, ErrorCode::kInvalidArgument, "embed: negative size");
  // Validate every id before writing anything, so a bad request leaves out untouched.
  for (std::int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw Error(ErrorCode::kTokenOutOfRange, "token id " + std::to_string(ids[i]) +
                                                   " is outside the vocabulary of size " +
                                                   std::to_string(vocab));
    }
  }
  for (std::int64_t i = 0; i < n; ++i) {
    std::memcpy(out + i * dim, table + static_cast<std::int64_t>(ids[i]) * dim,
                static_cast<std::size_t>(dim) * sizeof(float));
  }
}

}  // namespace chunkwise::cpu
