// Cheap estimates of a chunk's attention that the sparse policies build their masks from, and the
// mask assembly they share. Host code, fp32.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "chunkwise/policy/sparse/attention_probe.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"

namespace chunkwise::detail {

// Softmax rows of the chunk's last n queries of head h against every key they see (causal), fp32:
// a[i * kv_len + j] for i < rows() (row i at position kv_len - rows + i), zero past the diagonal.
struct LastQueryAttention {
  int rows = 0;
  int kv_len = 0;
  std::vector<float> a;
};
void last_query_attention(const AttentionProbe& p, int head, int n_last, LastQueryAttention& out);

// vertical[j] = sum over rows of a[., j]; slash[o] = sum over rows of the entries o positions left
// of the row's diagonal (o = query position - key position), both of length kv_len.
void vertical_slash_sums(const LastQueryAttention& a, std::vector<float>& vertical,
                         std::vector<float>& slash);

// Mean of head h's keys (queries of the chunk) over each tile: [tiles, head_dim]. Partial tiles
// average the rows they have.
void pool_keys(const AttentionProbe& p, int head, int tile, std::vector<float>& out);
void pool_queries(const AttentionProbe& p, int head, int tile, std::vector<float>& out);

// Indices of the k largest values, largest first (ties: lower index first).
std::vector<std::int32_t> top_k(std::span<const float> values, int k);

// How many of the largest values it takes for their sum to reach share * total (at least 1).
int cover_count(std::span<const float> values, double share);

// Collects per-(head, row) key tiles and columns and emits a valid BlockMask: tiles past the
// row's query tile are dropped, columns inside kept tiles or not before the row are dropped.
class MaskBuilder {
 public:
  MaskBuilder(const AttentionProbe& p, int tile);
  [[nodiscard]] int n_qtiles() const { return n_qtiles_; }
  [[nodiscard]] int first_qtile() const { return first_qtile_; }
  [[nodiscard]] int n_ktiles() const { return n_ktiles_; }
  // Row j (query tile first_qtile + j) of head h keeps key tile c.
  void keep_tile(int h, int j, int c);
  // Every row of head h keeps every causal tile.
  void keep_all(int h);
  void keep_column(int h, int j, std::int32_t position);
  BlockMask finish();

 private:
  int tile_, n_heads_, first_qtile_, n_qtiles_, n_ktiles_;
  std::vector<std::vector<std::uint8_t>> kept_;     // [head][j * n_ktiles + c]
  std::vector<std::vector<std::int32_t>> columns_;  // [head * n_qtiles + j]
};

// Attention recall: the share of head h's exact softmax mass (over every causal key) that the
// mask keeps, averaged over the given chunk rows (0 .. query_len - 1). 1 for a dense mask.
double attention_recall(const AttentionProbe& p, const BlockMask& mask, int head, std::span<const int> rows);

// Jensen-Shannon divergence of two distributions of equal length (each normalised here).
double js_divergence(std::span<const float> p, std::span<const float> q);

}  // namespace chunkwise::detail
