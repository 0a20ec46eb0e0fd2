#include "chunkwise/policy/sparse/flex_prefill_attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "../../detail/eigen_core.hpp"  // first: see there
#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"

namespace chunkwise {

namespace {
void softmax(std::vector<float>& x) {
  const float m = *std::max_element(x.begin(), x.end());
  double sum = 0;
  for (float& v : x) sum += (v = std::exp(v - m));
  for (float& v : x) v = static_cast<float>(v / sum);
}
}  // namespace

FlexPrefillAttention::FlexPrefillAttention(Params params)
    : SparsePolicyBase(std::move(params), "flex-prefill attention") {
  check(p_.gamma > 0 && p_.gamma <= 1, ErrorCode::kInvalidArgument,
        "flex-prefill attention: gamma must be in (0, 1]");
  check(p_.tau >= 0, ErrorCode::kInvalidArgument, "flex-prefill attention: tau must be >= 0");
  check(p_.min_budget >= 0 && p_.max_budget >= 0 && (p_.max_budget == 0 || p_.max_budget >= p_.min_budget),
        ErrorCode::kInvalidArgument,
        "flex-prefill attention: need 0 <= min_budget <= max_budget (0 = no cap)");
}

BlockMask FlexPrefillAttention::select(const AttentionProbe& probe) const {
  if (p_.fallback.dense_for(probe)) return dense_mask(probe, p_.tile);
  const int T = p_.tile, d = probe.head_dim;
  detail::MaskBuilder b(probe, T);
  const int n_k = b.n_ktiles();
  const int min_blocks = (p_.min_budget + T - 1) / T;
  const int max_blocks = p_.max_budget > 0 ? (p_.max_budget + T - 1) / T : n_k;
  detail::LastQueryAttention a;
  std::vector<float> vertical, slash, kbar, qbar, est;
  for (int h = 0; h < probe.n_heads; ++h) {
    detail::last_query_attention(probe, h, T, a);
    detail::vertical_slash_sums(a, vertical, slash);
    // Budgets in tiles from the token-level profiles (the official code's "//128 + 1").
    int nv = detail::cover_count(vertical, p_.gamma) / T + 1;
    int ns = detail::cover_count(slash, p_.gamma) / T + 1;
    std::vector<float> v_pool(static_cast<std::size_t>(n_k), 0.0f),
        s_pool(static_cast<std::size_t>(n_k), 0.0f);
    for (int j = 0; j < probe.kv_len; ++j) {
      v_pool[static_cast<std::size_t>(j / T)] += vertical[static_cast<std::size_t>(j)];
      s_pool[static_cast<std::size_t>(j / T)] += slash[static_cast<std::size_t>(j)];
    }
    // Pattern test: the block-level estimate from the mean of the last queries against pooled keys.
    detail::pool_keys(probe, h, T, kbar);
    Eigen::VectorXf qmean = Eigen::VectorXf::Zero(d);
    for (int r = probe.query_len - a.rows; r < probe.query_len; ++r)
      qmean += Eigen::Map<const Eigen::VectorXf>(probe.query(r, h), d);
    qmean *= probe.scale / static_cast<float>(a.rows);
    est.assign(static_cast<std::size_t>(n_k), 0.0f);
    for (int c = 0; c < n_k; ++c)
      est[static_cast<std::size_t>(c)] =
          qmean.dot(Eigen::Map<const Eigen::VectorXf>(kbar.data() + static_cast<std::size_t>(c) * d, d));
    softmax(est);
    const bool query_aware = std::sqrt(detail::js_divergence(est, v_pool)) < p_.tau;
    if (query_aware) nv = ns = min_blocks;
    nv = std::clamp(nv, std::min(min_blocks, n_k), std::min(max_blocks, n_k));
    ns = std::clamp(ns, std::min(min_blocks, n_k), std::min(max_blocks, n_k));
    // The first column tile and the diagonal always; then the top tiles of each profile.
    v_pool.front() = s_pool.front() = std::numeric_limits<float>::infinity();
    const auto columns = detail::top_k(v_pool, nv);
    const auto offsets = detail::top_k(s_pool, ns);
    for (int j = 0; j < b.n_qtiles(); ++j) {
      const int t = b.first_qtile() + j;
      for (const std::int32_t c : columns) b.keep_tile(h, j, c);
      for (const std::int32_t o : offsets) b.keep_tile(h, j, t - o);
    }
    if (!query_aware) continue;
    // Query-aware heads: each query tile's pooled scores, largest first over all rows, until
    // they cover gamma of the rows' total (each row sums to 1).
    detail::pool_queries(probe, h, T, qbar);
    std::vector<std::pair<float, std::int32_t>> flat;  // (probability, j * n_k + c)
    for (int j = 0; j < b.n_qtiles(); ++j) {
      const int t = b.first_qtile() + j;
      const Eigen::Map<const Eigen::VectorXf> q(qbar.data() + static_cast<std::size_t>(j) * d, d);
      std::vector<float> row(static_cast<std::size_t>(t + 1));
      for (int c = 0; c <= t; ++c)
        row[static_cast<std::size_t>(c)] =
            probe.scale *
            q.dot(Eigen::Map<const Eigen::VectorXf>(kbar.data() + static_cast<std::size_t>(c) * d, d));
      softmax(row);
      for (int c = 0; c <= t; ++c) flat.emplace_back(row[static_cast<std::size_t>(c)], j * n_k + c);
    }
    std::sort(flat.begin(), flat.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
    const double target = p_.gamma * b.n_qtiles();
    double sum = 0;
    for (const auto& [prob, idx] : flat) {
      if (sum >= target) break;
      sum += prob;
      b.keep_tile(h, idx / n_k, idx % n_k);
    }
  }
  return b.finish();
}

}  // namespace chunkwise
