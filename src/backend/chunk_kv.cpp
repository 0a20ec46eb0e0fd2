// Backend-independent half of chunk KV movement: checks and the host-side key re-rotation.
#include "chunkwise/backend/chunk_kv.hpp"

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "chunkwise/core/error.hpp"

namespace chunkwise {

void rotate_keys(std::span<float> k, int n_kv_heads, int head_dim, std::int32_t delta,
                 std::span<const float> inv_freq) {
  check(n_kv_heads > 0 && head_dim > 0 && head_dim % 2 == 0, ErrorCode::kInvalidArgument,
        "rotate_keys: need n_kv_heads > 0 and an even head_dim > 0");
  const auto half = static_cast<std::size_t>(head_dim / 2);
  check(inv_freq.size() == half, ErrorCode::kInvalidArgument,
        "rotate_keys: inv_freq must have head_dim/2 entries");
  const std::size_t row = static_cast<std::size_t>(n_kv_heads) * static_cast<std::size_t>(head_dim);
  check(k.size() % row == 0, ErrorCode::kInvalidArgument, "rotate_keys: k is not a whole number of rows");
  if (delta == 0) return;
  std::vector<double> cos_v(half), sin_v(half);
  for (std::size_t i = 0; i < half; ++i) {
    const double angle = static_cast<double>(delta) * static_cast<double>(inv_freq[i]);
    cos_v[i] = std::cos(angle);
    sin_v[i] = std::sin(angle);
  }
  for (std::size_t h = 0; h < k.size(); h += static_cast<std::size_t>(head_dim)) {
    float* x = k.data() + h;
    for (std::size_t i = 0; i < half; ++i) {
      const double x1 = x[i], x2 = x[i + half];
      x[i] = static_cast<float>(x1 * cos_v[i] - x2 * sin_v[i]);
      x[i + half] = static_cast<float>(x2 * cos_v[i] + x1 * sin_v[i]);
    }
  }
}

void check_chunk_placement(const ChunkKv& kv, const ModelConfig& c, std::int32_t position,
                           std::span<const std::int64_t> slots, int num_blocks, int block_size) {
  kv.validate();
  if (kv.n_layers != c.n_layers || kv.kv_dim != c.kv_dim()) {
    throw Error(ErrorCode::kInvalidArgument, "chunk KV has " + std::to_string(kv.n_layers) +
                                                 " layers of width " + std::to_string(kv.kv_dim) +
                                                 "; the model has " + std::to_string(c.n_layers) +
                                                 " of width " + std::to_string(c.kv_dim()));
  }
  check(position >= 0, ErrorCode::kInvalidArgument, "chunk KV: position must be >= 0");
  check(slots.size() == static_cast<std::size_t>(kv.n_tokens), ErrorCode::kInvalidArgument,
        "chunk KV: need one cache slot per token");
  const std::int64_t max_slot = static_cast<std::int64_t>(num_blocks) * block_size;
  for (const auto s : slots)
    check(s >= 0 && s < max_slot, ErrorCode::kInvalidArgument,
          [&] { return "chunk KV: cache slot " + std::to_string(s) + " outside the KV pool"; });
}

}  // namespace chunkwise
