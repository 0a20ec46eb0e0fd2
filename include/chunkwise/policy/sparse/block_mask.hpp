// The block-sparse mask a sparse-attention policy returns (METHODS.md 2.1), in the layout the
// kernels read: per head, BSR rows over fixed query/key tiles plus optional extra key columns.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/sparse/attention_probe.hpp"

namespace chunkwise {

// Tiles are by absolute position: query tile t holds positions [t*tile, (t+1)*tile), key tile c
// the cache positions [c*tile, (c+1)*tile). Row j of head h (index h * n_qtiles + j) is the query
// tile first_qtile + j, where first_qtile = query_begin / tile and n_qtiles covers the chunk.
//   col_index[row_ptr[r] .. row_ptr[r+1]): key tiles the row attends to, ascending, each <= its
//     query tile (inside the diagonal tile the causal mask applies per element);
//   column_index[column_ptr[r] .. column_ptr[r+1]) (both empty for none): extra key positions,
//     ascending, strictly before the row's first position and outside its kept tiles.
// dense == true means every causal key of every head: the exact path, with no index at all.
struct BlockMask {
  bool dense = true;
  int tile = 64;
  int n_heads = 0;
  int first_qtile = 0;
  int n_qtiles = 0;
  std::vector<std::int32_t> row_ptr;  // [n_heads * n_qtiles + 1]
  std::vector<std::int32_t> col_index;
  std::vector<std::int32_t> column_ptr;  // empty, or [n_heads * n_qtiles + 1]
  std::vector<std::int32_t> column_index;

  [[nodiscard]] int rows() const { return n_heads * n_qtiles; }
  [[nodiscard]] bool has_columns() const { return !column_ptr.empty(); }
};

// Query tiles of a chunk: [query_begin / tile, (kv_len - 1) / tile].
inline int first_query_tile(const AttentionProbe& p, int tile) {
  return p.query_begin / tile;
}
inline int query_tiles(const AttentionProbe& p, int tile) {
  return p.query_len == 0 ? 0 : (p.kv_len - 1) / tile - p.query_begin / tile + 1;
}

// The dense mask (no index) for a chunk.
inline BlockMask dense_mask(const AttentionProbe& p, int tile) {
  BlockMask m;
  m.dense = true;
  m.tile = tile;
  m.n_heads = p.n_heads;
  m.first_qtile = first_query_tile(p, tile);
  m.n_qtiles = query_tiles(p, tile);
  return m;
}

// Throws Error(kInvalidArgument) unless mask is well formed for probe (sizes, order, causality).
void validate(const BlockMask& mask, const AttentionProbe& probe);

// Work of a mask, in key tiles: computed tiles (a column counts 1/tile) against the causal tiles
// of the chunk (every key tile c <= t for every row). Dense: both are the causal count.
struct MaskCost {
  double computed_tiles = 0;
  double causal_tiles = 0;
  [[nodiscard]] double density() const { return causal_tiles > 0 ? computed_tiles / causal_tiles : 1.0; }
};
MaskCost mask_cost(const BlockMask& mask);

// Expands a mask to every-key-tile form: the mask that dense == true stands for, explicitly.
BlockMask explicit_dense_mask(const AttentionProbe& p, int tile);

}  // namespace chunkwise
