// BlockMask checks, cost and the explicit every-tile form (block_mask.hpp).
#include "chunkwise/policy/sparse/block_mask.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "chunkwise/core/error.hpp"

namespace chunkwise {
namespace {

[[noreturn]] void fail(const std::string& message) {
  throw Error(ErrorCode::kInvalidArgument, "block mask: " + message);
}

void check_tile(int tile) {
  if (tile != 64 && tile != 128) fail("tile must be 64 or 128, got " + std::to_string(tile));
}

// A CSR pointer array over `rows` rows indexing `n_index` entries.
void check_ptr(const std::vector<std::int32_t>& ptr, std::int64_t rows, std::size_t n_index, const char* name,
               const char* index_name) {
  if (static_cast<std::int64_t>(ptr.size()) != rows + 1) {
    fail(std::string(name) + " has " + std::to_string(ptr.size()) +
         " entries, expected rows + 1 = " + std::to_string(rows + 1));
  }
  if (ptr.front() != 0)
    fail(std::string(name) + " must start at 0, starts at " + std::to_string(ptr.front()));
  for (std::size_t r = 0; r + 1 < ptr.size(); ++r) {
    if (ptr[r + 1] < ptr[r]) fail(std::string(name) + " decreases at row " + std::to_string(r));
  }
  if (static_cast<std::size_t>(ptr.back()) != n_index) {
    fail(std::string(name) + " ends at " + std::to_string(ptr.back()) + " but " + index_name + " has " +
         std::to_string(n_index) + " entries");
  }
}

// Sum of (t + 1) over the query tiles t of the chunk, times the heads.
double causal_tiles(const BlockMask& m) {
  double per_head = 0;
  for (int j = 0; j < m.n_qtiles; ++j) per_head += static_cast<double>(m.first_qtile + j) + 1.0;
  return per_head * m.n_heads;
}

}  // namespace

void validate(const BlockMask& mask, const AttentionProbe& probe) {
  check_tile(mask.tile);
  if (mask.dense) return;
  const int tile = mask.tile;
  if (mask.n_heads != probe.n_heads) {
    fail("n_heads is " + std::to_string(mask.n_heads) + ", the probe has " + std::to_string(probe.n_heads));
  }
  if (probe.query_len < 0 || probe.query_begin < 0) fail("probe has a negative query_begin or query_len");
  const int first = first_query_tile(probe, tile);
  const int count = query_tiles(probe, tile);
  if (mask.first_qtile != first || mask.n_qtiles != count) {
    fail("query tiles " + std::to_string(mask.first_qtile) + " + " + std::to_string(mask.n_qtiles) +
         ", the chunk has " + std::to_string(first) + " + " + std::to_string(count));
  }
  if (mask.n_heads < 0 || mask.n_qtiles < 0) fail("negative n_heads or n_qtiles");
  const std::int64_t rows = static_cast<std::int64_t>(mask.n_heads) * mask.n_qtiles;
  check_ptr(mask.row_ptr, rows, mask.col_index.size(), "row_ptr", "col_index");
  const bool columns = !mask.column_ptr.empty();
  if (columns) {
    check_ptr(mask.column_ptr, rows, mask.column_index.size(), "column_ptr", "column_index");
  } else if (!mask.column_index.empty()) {
    fail("column_index has entries but column_ptr is empty");
  }

  for (std::int64_t r = 0; r < rows; ++r) {
    const auto ru = static_cast<std::size_t>(r);
    const std::int64_t t = mask.first_qtile + r % mask.n_qtiles;
    const std::int32_t b = mask.row_ptr[ru], e = mask.row_ptr[ru + 1];
    for (std::int32_t i = b; i < e; ++i) {
      const std::int32_t c = mask.col_index[static_cast<std::size_t>(i)];
      if (c < 0 || c > t) {
        fail("row " + std::to_string(r) + " (query tile " + std::to_string(t) + ") keeps key tile " +
             std::to_string(c) + ", outside [0, " + std::to_string(t) + "]");
      }
      if (i > b && c <= mask.col_index[static_cast<std::size_t>(i - 1)]) {
        fail("row " + std::to_string(r) + ": key tiles are not strictly ascending");
      }
    }
    if (!columns) continue;
    const std::int64_t row_start = t * tile;
    std::int32_t k = b;  // next kept tile not below the current column
    for (std::int32_t i = mask.column_ptr[ru]; i < mask.column_ptr[ru + 1]; ++i) {
      const std::int32_t col = mask.column_index[static_cast<std::size_t>(i)];
      if (col < 0 || col >= row_start) {
        fail("row " + std::to_string(r) + " (query tile " + std::to_string(t) + ") has column " +
             std::to_string(col) + ", outside [0, " + std::to_string(row_start) + ")");
      }
      if (i > mask.column_ptr[ru] && col <= mask.column_index[static_cast<std::size_t>(i - 1)]) {
        fail("row " + std::to_string(r) + ": columns are not strictly ascending");
      }
      const std::int32_t col_tile = col / tile;
      while (k < e && mask.col_index[static_cast<std::size_t>(k)] < col_tile) ++k;
      if (k < e && mask.col_index[static_cast<std::size_t>(k)] == col_tile) {
        fail("row " + std::to_string(r) + ": column " + std::to_string(col) + " lies inside kept key tile " +
             std::to_string(col_tile));
      }
    }
  }
}

MaskCost mask_cost(const BlockMask& mask) {
  MaskCost cost;
  cost.causal_tiles = causal_tiles(mask);
  if (mask.dense) {
    cost.computed_tiles = cost.causal_tiles;
  } else {
    cost.computed_tiles = static_cast<double>(mask.col_index.size()) +
                          static_cast<double>(mask.column_index.size()) / static_cast<double>(mask.tile);
  }
  return cost;
}

BlockMask explicit_dense_mask(const AttentionProbe& p, int tile) {
  check_tile(tile);
  BlockMask m = dense_mask(p, tile);
  m.dense = false;
  m.row_ptr.reserve(static_cast<std::size_t>(m.rows()) + 1);
  m.row_ptr.push_back(0);
  for (int h = 0; h < m.n_heads; ++h) {
    for (int j = 0; j < m.n_qtiles; ++j) {
      const int t = m.first_qtile + j;
      for (int c = 0; c <= t; ++c) m.col_index.push_back(c);
      m.row_ptr.push_back(static_cast<std::int32_t>(m.col_index.size()));
    }
  }
  return m;
}

}  // namespace chunkwise
