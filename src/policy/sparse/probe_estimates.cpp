#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "../../detail/eigen_core.hpp"  // first: see there

namespace chunkwise::detail {

namespace {
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Strided = Eigen::Map<const RowMatrix, 0, Eigen::OuterStride<>>;

// Head h's keys [kv_len, head_dim] as a strided view of the probe.
Strided keys_of(const AttentionProbe& p, int head) {
  return {p.key(0, head), p.kv_len, p.head_dim,
          Eigen::OuterStride<>(static_cast<Eigen::Index>(p.n_kv_heads) * p.head_dim)};
}
Strided queries_of(const AttentionProbe& p, int head, int row0, int rows) {
  return {p.query(row0, head), rows, p.head_dim,
          Eigen::OuterStride<>(static_cast<Eigen::Index>(p.n_heads) * p.head_dim)};
}

void pool(const Strided& x, int first_pos, int tile, std::vector<float>& out) {
  // x row r sits at position first_pos + r; tile t covers positions [t*tile, (t+1)*tile).
  const int n = static_cast<int>(x.rows()), d = static_cast<int>(x.cols());
  const int t0 = first_pos / tile, t1 = (first_pos + n - 1) / tile;
  out.assign(static_cast<std::size_t>(t1 - t0 + 1) * d, 0.0f);
  for (int t = t0; t <= t1; ++t) {
    const int r0 = std::max(0, t * tile - first_pos), r1 = std::min(n, (t + 1) * tile - first_pos);
    Eigen::Map<Eigen::RowVectorXf> o(out.data() + static_cast<std::size_t>(t - t0) * d, d);
    o = x.middleRows(r0, r1 - r0).colwise().mean();
  }
}
}  // namespace

void last_query_attention(const AttentionProbe& p, int head, int n_last, LastQueryAttention& out) {
  const int rows = std::min(n_last, p.query_len);
  out.rows = rows;
  out.kv_len = p.kv_len;
  out.a.assign(static_cast<std::size_t>(rows) * p.kv_len, 0.0f);
  Eigen::Map<RowMatrix> a(out.a.data(), rows, p.kv_len);
  a.noalias() = queries_of(p, head, p.query_len - rows, rows) * keys_of(p, head).transpose();
  for (int i = 0; i < rows; ++i) {
    const int visible = p.kv_len - rows + i + 1;  // keys 0 .. own position
    auto row = a.row(i);
    row.head(visible) *= p.scale;
    const float m = row.head(visible).maxCoeff();
    row.head(visible) = (row.head(visible).array() - m).exp();
    row.head(visible) /= row.head(visible).sum();
    row.tail(p.kv_len - visible).setZero();
  }
}

void vertical_slash_sums(const LastQueryAttention& a, std::vector<float>& vertical,
                         std::vector<float>& slash) {
  const int n = a.kv_len;
  vertical.assign(static_cast<std::size_t>(n), 0.0f);
  slash.assign(static_cast<std::size_t>(n), 0.0f);
  for (int i = 0; i < a.rows; ++i) {
    const int pos = n - a.rows + i;
    const float* row = a.a.data() + static_cast<std::size_t>(i) * n;
    for (int j = 0; j <= pos; ++j) {
      vertical[static_cast<std::size_t>(j)] += row[j];
      slash[static_cast<std::size_t>(pos - j)] += row[j];
    }
  }
}

void pool_keys(const AttentionProbe& p, int head, int tile, std::vector<float>& out) {
  pool(keys_of(p, head), 0, tile, out);
}

void pool_queries(const AttentionProbe& p, int head, int tile, std::vector<float>& out) {
  pool(queries_of(p, head, 0, p.query_len), p.query_begin, tile, out);
}

std::vector<std::int32_t> top_k(std::span<const float> values, int k) {
  std::vector<std::int32_t> idx(values.size());
  std::iota(idx.begin(), idx.end(), 0);
  k = std::clamp(k, 0, static_cast<int>(values.size()));
  const auto greater = [&](std::int32_t a, std::int32_t b) {
    return values[static_cast<std::size_t>(a)] > values[static_cast<std::size_t>(b)] ||
           (values[static_cast<std::size_t>(a)] == values[static_cast<std::size_t>(b)] && a < b);
  };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), greater);
  idx.resize(static_cast<std::size_t>(k));
  return idx;
}

int cover_count(std::span<const float> values, double share) {
  std::vector<float> v(values.begin(), values.end());
  std::sort(v.begin(), v.end(), std::greater<>());
  const double total = std::accumulate(v.begin(), v.end(), 0.0);
  double sum = 0;
  int n = 0;
  for (const float x : v) {
    if (n > 0 && sum >= share * total) break;
    sum += x;
    ++n;
  }
  return std::max(n, 1);
}

MaskBuilder::MaskBuilder(const AttentionProbe& p, int tile)
    : tile_(tile),
      n_heads_(p.n_heads),
      first_qtile_(first_query_tile(p, tile)),
      n_qtiles_(query_tiles(p, tile)),
      n_ktiles_(first_qtile_ + n_qtiles_),
      kept_(static_cast<std::size_t>(p.n_heads),
            std::vector<std::uint8_t>(static_cast<std::size_t>(n_qtiles_) * n_ktiles_, 0)),
      columns_(static_cast<std::size_t>(p.n_heads) * n_qtiles_) {}

void MaskBuilder::keep_tile(int h, int j, int c) {
  if (j < 0 || j >= n_qtiles_ || c < 0 || c > first_qtile_ + j) return;
  kept_[static_cast<std::size_t>(h)][static_cast<std::size_t>(j) * n_ktiles_ + c] = 1;
}

void MaskBuilder::keep_all(int h) {
  for (int j = 0; j < n_qtiles_; ++j)
    for (int c = 0; c <= first_qtile_ + j; ++c) keep_tile(h, j, c);
}

void MaskBuilder::keep_column(int h, int j, std::int32_t position) {
  if (j < 0 || j >= n_qtiles_ || position < 0 || position >= (first_qtile_ + j) * tile_) return;
  columns_[static_cast<std::size_t>(h) * n_qtiles_ + j].push_back(position);
}

BlockMask MaskBuilder::finish() {
  BlockMask m;
  m.dense = false;
  m.tile = tile_;
  m.n_heads = n_heads_;
  m.first_qtile = first_qtile_;
  m.n_qtiles = n_qtiles_;
  m.row_ptr.assign(1, 0);
  m.column_ptr.assign(1, 0);
  bool any_column = false;
  for (int h = 0; h < n_heads_; ++h) {
    const auto& kept = kept_[static_cast<std::size_t>(h)];
    for (int j = 0; j < n_qtiles_; ++j) {
      const std::uint8_t* row = kept.data() + static_cast<std::size_t>(j) * n_ktiles_;
      for (int c = 0; c < n_ktiles_; ++c)
        if (row[c]) m.col_index.push_back(c);
      m.row_ptr.push_back(static_cast<std::int32_t>(m.col_index.size()));
      auto& cols = columns_[static_cast<std::size_t>(h) * n_qtiles_ + j];
      std::sort(cols.begin(), cols.end());
      cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
      for (const std::int32_t pos : cols) {
        if (row[pos / tile_]) continue;
        m.column_index.push_back(pos);
        any_column = true;
      }
      m.column_ptr.push_back(static_cast<std::int32_t>(m.column_index.size()));
    }
  }
  if (!any_column) {
    m.column_ptr.clear();
    m.column_index.clear();
  }
  return m;
}

double attention_recall(const AttentionProbe& p, const BlockMask& mask, int head, std::span<const int> rows) {
  if (mask.dense || rows.empty()) return 1.0;
  const Strided keys = keys_of(p, head);
  double total = 0;
  Eigen::VectorXf s;
  for (const int r : rows) {
    const int pos = p.query_begin + r;
    const int visible = pos + 1;
    s.noalias() = keys.topRows(visible) * Eigen::Map<const Eigen::VectorXf>(p.query(r, head), p.head_dim);
    s *= p.scale;
    const float m = s.maxCoeff();
    s = (s.array() - m).exp();
    const double all = s.sum();
    const int row = head * mask.n_qtiles + pos / mask.tile - mask.first_qtile;
    double kept = 0;
    for (int i = mask.row_ptr[static_cast<std::size_t>(row)];
         i < mask.row_ptr[static_cast<std::size_t>(row) + 1]; ++i) {
      const int c = mask.col_index[static_cast<std::size_t>(i)];
      const int lo = c * mask.tile, hi = std::min(visible, (c + 1) * mask.tile);
      if (hi > lo) kept += s.segment(lo, hi - lo).sum();
    }
    if (mask.has_columns())
      for (int i = mask.column_ptr[static_cast<std::size_t>(row)];
           i < mask.column_ptr[static_cast<std::size_t>(row) + 1]; ++i)
        kept += s[mask.column_index[static_cast<std::size_t>(i)]];
    total += kept / all;
  }
  return total / static_cast<double>(rows.size());
}

double js_divergence(std::span<const float> p, std::span<const float> q) {
  const double sp = std::accumulate(p.begin(), p.end(), 0.0), sq = std::accumulate(q.begin(), q.end(), 0.0);
  double js = 0;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const double a = sp > 0 ? p[i] / sp : 0, b = sq > 0 ? q[i] / sq : 0, m = 0.5 * (a + b);
    if (a > 0) js += 0.5 * a * std::log(a / m);
    if (b > 0) js += 0.5 * b * std::log(b / m);
  }
  return std::max(js, 0.0);
}

}  // namespace chunkwise::detail
