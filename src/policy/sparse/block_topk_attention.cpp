#include "chunkwise/policy/sparse/block_topk_attention.hpp"

#include <limits>

#include "../../detail/eigen_core.hpp"  // first: see there
#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"

namespace chunkwise {

BlockTopKAttention::BlockTopKAttention(Params params)
    : SparsePolicyBase(std::move(params), "block top-k attention") {
  check(p_.top_k >= 2, ErrorCode::kInvalidArgument,
        "block top-k attention: top_k must be >= 2 (the sink and the diagonal tile are always kept)");
}

BlockMask BlockTopKAttention::select(const AttentionProbe& probe) const {
  if (p_.fallback.dense_for(probe)) return dense_mask(probe, p_.tile);
  detail::MaskBuilder b(probe, p_.tile);
  std::vector<float> qbar, kbar, scores;
  const int d = probe.head_dim;
  for (int h = 0; h < probe.n_heads; ++h) {
    detail::pool_queries(probe, h, p_.tile, qbar);
    detail::pool_keys(probe, h, p_.tile, kbar);
    for (int j = 0; j < b.n_qtiles(); ++j) {
      const int t = b.first_qtile() + j;
      const Eigen::Map<const Eigen::VectorXf> q(qbar.data() + static_cast<std::size_t>(j) * d, d);
      scores.assign(static_cast<std::size_t>(t + 1), 0.0f);
      for (int c = 0; c <= t; ++c)
        scores[static_cast<std::size_t>(c)] =
            q.dot(Eigen::Map<const Eigen::VectorXf>(kbar.data() + static_cast<std::size_t>(c) * d, d));
      // The sink and the diagonal first, then the best of the rest.
      scores.front() = std::numeric_limits<float>::infinity();
      scores.back() = std::numeric_limits<float>::infinity();
      for (const std::int32_t c : detail::top_k(scores, p_.top_k)) b.keep_tile(h, j, c);
    }
  }
  return b.finish();
}

}  // namespace chunkwise
