#include "chunkwise/policy/sparse/streaming_attention.hpp"

#include <algorithm>

#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"

namespace chunkwise {

StreamingAttention::StreamingAttention(Params params)
    : SparsePolicyBase(std::move(params), "streaming attention") {
  check(p_.sink >= 0 && p_.window >= 0, ErrorCode::kInvalidArgument,
        "streaming attention: sink and window must be >= 0");
}

BlockMask StreamingAttention::select(const AttentionProbe& probe) const {
  if (p_.fallback.dense_for(probe)) return dense_mask(probe, p_.tile);
  detail::MaskBuilder b(probe, p_.tile);
  const int sink_tiles = (p_.sink + p_.tile - 1) / p_.tile;
  const int window_tiles = (p_.window + p_.tile - 1) / p_.tile;
  for (int h = 0; h < probe.n_heads; ++h) {
    for (int j = 0; j < b.n_qtiles(); ++j) {
      const int t = b.first_qtile() + j;
      for (int c = 0; c < std::min(sink_tiles, t + 1); ++c) b.keep_tile(h, j, c);
      for (int c = std::max(0, t - window_tiles); c <= t; ++c) b.keep_tile(h, j, c);
    }
  }
  return b.finish();
}

}  // namespace chunkwise
