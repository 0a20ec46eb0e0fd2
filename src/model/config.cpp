#include "chunkwise/model/config.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>

#include "chunkwise/core/error.hpp"

namespace chunkwise {
namespace {

// Generous ceilings: far above any Llama-family model, low enough that products of two of them
// (a weight matrix's element count) stay far from int64 overflow and far from a sane allocation.
constexpr int kMaxLayers = 1 << 12;
constexpr int kMaxWidth = 1 << 18;    // hidden, ffn, q_dim, kv_dim
constexpr int kMaxVocab = 1 << 22;    // 4M tokens
constexpr int kMaxContext = 1 << 24;  // 16M positions
constexpr int kMaxHeads = 1 << 12;

[[noreturn]] void bad(const std::string& message) {
  throw Error(ErrorCode::kModelFormat, "model config: " + message);
}

void in_range(const char* what, std::int64_t v, std::int64_t lo, std::int64_t hi) {
  if (v < lo || v > hi) bad(fmt::format("{} = {} is outside [{}, {}]", what, v, lo, hi));
}

}  // namespace

void validate(const ModelConfig& c) {
  in_range("n_layers", c.n_layers, 1, kMaxLayers);
  in_range("hidden", c.hidden, 1, kMaxWidth);
  in_range("ffn", c.ffn, 1, kMaxWidth);
  in_range("n_heads", c.n_heads, 1, kMaxHeads);
  in_range("n_kv_heads", c.n_kv_heads, 1, c.n_heads);
  in_range("head_dim", c.head_dim, 2, kMaxWidth);
  in_range("vocab", c.vocab, 1, kMaxVocab);
  in_range("max_context", c.max_context, 1, kMaxContext);
  if (c.n_heads % c.n_kv_heads != 0) {
    bad(fmt::format("n_heads {} is not a multiple of n_kv_heads {}", c.n_heads, c.n_kv_heads));
  }
  // RoPE rotates pairs of dimensions.
  if (c.head_dim % 2 != 0) bad(fmt::format("head_dim {} is odd", c.head_dim));
  in_range("n_heads * head_dim", std::int64_t{c.n_heads} * c.head_dim, 1, kMaxWidth);
  if (!(std::isfinite(c.rope_theta) && c.rope_theta > 0.0f))
    bad(fmt::format("rope_theta {} invalid", c.rope_theta));
  if (!(std::isfinite(c.rms_eps) && c.rms_eps > 0.0f && c.rms_eps < 1.0f)) {
    bad(fmt::format("rms_eps {} invalid", c.rms_eps));
  }
  if (c.rope_scaling.enabled) {
    const RopeScaling& s = c.rope_scaling;
    if (!(std::isfinite(s.factor) && s.factor >= 1.0f))
      bad(fmt::format("rope scaling factor {} invalid", s.factor));
    if (!(std::isfinite(s.low_freq_factor) && std::isfinite(s.high_freq_factor) && s.low_freq_factor > 0.0f &&
          s.high_freq_factor > s.low_freq_factor)) {
      bad(fmt::format("rope scaling low/high frequency factors {} / {} invalid", s.low_freq_factor,
                      s.high_freq_factor));
    }
    in_range("rope scaling original_max_position", s.original_max_position, 1, kMaxContext);
  }
  in_range("bos", c.bos, -1, c.vocab - 1);
  in_range("eos", c.eos, -1, c.vocab - 1);
}

}  // namespace chunkwise
