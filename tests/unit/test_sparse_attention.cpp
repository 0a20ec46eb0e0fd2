// BlockMask checks and cost, and the CPU block-sparse prefill attention against paged_attention
// (dense masks) and a naive masked-softmax reference (random sparse masks with columns).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/model/model.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"
#include "compare.hpp"
#include "random_model.hpp"

namespace {

using chunkwise::AttentionProbe;
using chunkwise::BlockMask;
using chunkwise::Error;
using chunkwise::ErrorCode;
namespace cpu = chunkwise::cpu;

using chunkwise::test::error_code_of;
using chunkwise::test::max_abs_diff;

AttentionProbe make_probe(int n_heads, int n_kv, int d, int query_begin, int query_len) {
  AttentionProbe p;
  p.n_heads = n_heads;
  p.n_kv_heads = n_kv;
  p.head_dim = d;
  p.query_begin = query_begin;
  p.query_len = query_len;
  p.kv_len = query_begin + query_len;
  return p;
}

// One sequence's keys in a paged pool: contiguous K/V for the reference, the same rows written
// through shuffled pages of a pool whose unused slots are NaN (a stray read poisons the output).
struct PagedSeq {
  int block_size, n_kv, d, kv_len;
  std::vector<float> kd, vd, kpool, vpool;
  std::vector<std::int32_t> pages;
  [[nodiscard]] cpu::PagedKv cache() { return {kpool.data(), vpool.data(), block_size, n_kv, d}; }
};

PagedSeq make_seq(int block_size, int n_kv, int d, int kv_len, std::mt19937& rng) {
  PagedSeq s{block_size, n_kv, d, kv_len, {}, {}, {}, {}, {}};
  const std::int64_t kv_dim = static_cast<std::int64_t>(n_kv) * d;
  s.kd = chunkwise::test::random_vector(static_cast<std::size_t>(kv_len * kv_dim), rng);
  s.vd = chunkwise::test::random_vector(static_cast<std::size_t>(kv_len * kv_dim), rng);
  const int n_pages = (kv_len + block_size - 1) / block_size;
  const int pool_pages = n_pages + 4;
  std::vector<std::int32_t> order(static_cast<std::size_t>(pool_pages));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  s.pages.assign(order.begin(), order.begin() + n_pages);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  s.kpool.assign(static_cast<std::size_t>(pool_pages) * block_size * kv_dim, nan);
  s.vpool.assign(s.kpool.size(), nan);
  std::vector<std::int64_t> slots;
  for (int t = 0; t < kv_len; ++t) {
    slots.push_back(static_cast<std::int64_t>(s.pages[static_cast<std::size_t>(t / block_size)]) *
                        block_size +
                    t % block_size);
  }
  cpu::write_kv(s.cache(), s.kd.data(), s.vd.data(), slots.data(), kv_len);
  return s;
}

// paged_attention on the sequence's rows at positions [query_begin, kv_len).
std::vector<float> dense_reference(PagedSeq& s, const std::vector<float>& q, int query_begin, int n_heads,
                                   float scale) {
  const int n = s.kv_len - query_begin;
  const std::vector<std::int32_t> qs = {0, n}, ps = {0, static_cast<std::int32_t>(s.pages.size())},
                                  kv = {s.kv_len};
  std::vector<std::int32_t> pos;
  for (int p = query_begin; p < s.kv_len; ++p) pos.push_back(p);
  std::vector<float> out(q.size());
  cpu::paged_attention(q.data(), s.cache(), {qs, ps, s.pages, kv, pos}, n_heads, scale, out.data());
  return out;
}

// The mask materialised and applied naively, in double: row at position p, head h sees key c
// when c's tile is kept and c <= p, or c is one of the row's columns. No visible key: zeros.
std::vector<double> masked_reference(const PagedSeq& s, const std::vector<float>& q, int query_begin,
                                     int n_heads, float scale, const BlockMask& m) {
  const int d = s.d, group = n_heads / s.n_kv;
  const std::int64_t kv_dim = static_cast<std::int64_t>(s.n_kv) * d;
  const int n = s.kv_len - query_begin;
  std::vector<double> ref(q.size(), 0.0);
  for (int r = 0; r < n; ++r) {
    const int p = query_begin + r;
    const int j = p / m.tile - m.first_qtile;
    for (int h = 0; h < n_heads; ++h) {
      const auto row = static_cast<std::size_t>(h * m.n_qtiles + j);
      std::vector<char> visible(static_cast<std::size_t>(s.kv_len), 0);
      for (std::int32_t i = m.row_ptr[row]; i < m.row_ptr[row + 1]; ++i) {
        const int c = m.col_index[static_cast<std::size_t>(i)];
        for (int key = c * m.tile; key < (c + 1) * m.tile && key <= p; ++key)
          visible[static_cast<std::size_t>(key)] = 1;
      }
      if (m.has_columns()) {
        for (std::int32_t i = m.column_ptr[row]; i < m.column_ptr[row + 1]; ++i)
          visible[static_cast<std::size_t>(m.column_index[static_cast<std::size_t>(i)])] = 1;
      }
      const int kvh = h / group;
      const float* qv = q.data() + (static_cast<std::int64_t>(r) * n_heads + h) * d;
      std::vector<double> w(static_cast<std::size_t>(s.kv_len), 0.0);
      double mx = -1e300;
      for (int key = 0; key < s.kv_len; ++key) {
        if (!visible[static_cast<std::size_t>(key)]) continue;
        double dot = 0.0;
        for (int x = 0; x < d; ++x) dot += static_cast<double>(qv[x]) * s.kd[key * kv_dim + kvh * d + x];
        w[static_cast<std::size_t>(key)] = dot * scale;
        mx = std::max(mx, dot * scale);
      }
      double sum = 0.0;
      for (int key = 0; key < s.kv_len; ++key) {
        if (!visible[static_cast<std::size_t>(key)]) continue;
        sum += (w[static_cast<std::size_t>(key)] = std::exp(w[static_cast<std::size_t>(key)] - mx));
      }
      if (sum == 0.0) continue;
      double* o = ref.data() + (static_cast<std::int64_t>(r) * n_heads + h) * d;
      for (int key = 0; key < s.kv_len; ++key) {
        if (!visible[static_cast<std::size_t>(key)]) continue;
        const double wk = w[static_cast<std::size_t>(key)] / sum;
        for (int x = 0; x < d; ++x) o[x] += wk * s.vd[key * kv_dim + kvh * d + x];
      }
    }
  }
  return ref;
}

// A random mask: each off-diagonal tile kept with probability `density`, the diagonal usually,
// and (with_columns) a few columns outside the kept tiles. Heads of a GQA group sometimes copy
// their neighbour's row, so both the shared-gather and the per-head paths run.
BlockMask random_mask(const AttentionProbe& p, int tile, double density, bool with_columns, int group,
                      std::mt19937& rng) {
  BlockMask m = chunkwise::dense_mask(p, tile);
  m.dense = false;
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::vector<std::vector<std::int32_t>> tiles(static_cast<std::size_t>(m.rows())),
      cols(static_cast<std::size_t>(m.rows()));
  for (int h = 0; h < m.n_heads; ++h) {
    for (int j = 0; j < m.n_qtiles; ++j) {
      const auto r = static_cast<std::size_t>(h * m.n_qtiles + j);
      if (h % group != 0 && u(rng) < 0.5) {
        tiles[r] = tiles[r - static_cast<std::size_t>(m.n_qtiles)];
        cols[r] = cols[r - static_cast<std::size_t>(m.n_qtiles)];
        continue;
      }
      const int t = m.first_qtile + j;
      for (int c = 0; c <= t; ++c) {
        if (u(rng) < (c == t ? 0.85 : density)) tiles[r].push_back(c);
      }
      if (!with_columns) continue;
      for (int key = 0; key < t * tile; ++key) {
        const bool in_kept = std::binary_search(tiles[r].begin(), tiles[r].end(), key / tile);
        if (!in_kept && u(rng) < 0.03) cols[r].push_back(key);
      }
    }
  }
  m.row_ptr = {0};
  for (const auto& t : tiles) {
    m.col_index.insert(m.col_index.end(), t.begin(), t.end());
    m.row_ptr.push_back(static_cast<std::int32_t>(m.col_index.size()));
  }
  if (with_columns) {
    m.column_ptr = {0};
    for (const auto& c : cols) {
      m.column_index.insert(m.column_index.end(), c.begin(), c.end());
      m.column_ptr.push_back(static_cast<std::int32_t>(m.column_index.size()));
    }
  }
  return m;
}

}  // namespace

TEST_CASE("validate accepts well-formed masks and rejects each malformed one", "[sparse]") {
  // 2 heads, chunk at positions [100, 200): query tiles 1 and 2 of tile 64 (rows 0..3).
  const AttentionProbe probe = make_probe(2, 1, 64, 100, 100);
  BlockMask good;
  good.dense = false;
  good.tile = 64;
  good.n_heads = 2;
  good.first_qtile = 1;
  good.n_qtiles = 3;  // (199 / 64) - 1 + 1
  // Rows: h0 t1 {0, 1}, h0 t2 {2}, h0 t3 {1, 3}, h1 t1 {}, h1 t2 {0, 2}, h1 t3 {3}.
  good.row_ptr = {0, 2, 3, 5, 5, 7, 8};
  good.col_index = {0, 1, 2, 1, 3, 0, 2, 3};
  // Columns: h0 t2 {10, 70}, h1 t1 {5}, h1 t3 {100, 150}; others none.
  good.column_ptr = {0, 0, 2, 2, 3, 3, 5};
  good.column_index = {10, 70, 5, 100, 150};
  REQUIRE(good.rows() == 6);
  REQUIRE(chunkwise::query_tiles(probe, 64) == 3);
  chunkwise::validate(good, probe);
  BlockMask no_columns = good;
  no_columns.column_ptr.clear();
  no_columns.column_index.clear();
  chunkwise::validate(no_columns, probe);

  auto rejects = [&](const BlockMask& m) {
    return error_code_of([&] { chunkwise::validate(m, probe); }) == ErrorCode::kInvalidArgument;
  };
  SECTION("tile sizes") {
    BlockMask m = good;
    m.tile = 32;
    CHECK(rejects(m));
    BlockMask dense = chunkwise::dense_mask(probe, 64);
    chunkwise::validate(dense, probe);
    dense.tile = 32;
    CHECK(rejects(dense));
    dense.tile = 128;
    chunkwise::validate(dense, probe);
    CHECK(error_code_of([&] { (void)chunkwise::explicit_dense_mask(probe, 32); }) ==
          ErrorCode::kInvalidArgument);
  }
  SECTION("unsorted or repeated key tiles") {
    BlockMask m = good;
    m.col_index = {1, 0, 2, 1, 3, 0, 2, 3};
    CHECK(rejects(m));
    m.col_index = {1, 1, 2, 1, 3, 0, 2, 3};
    CHECK(rejects(m));
  }
  SECTION("key tile out of range") {
    BlockMask m = good;
    m.col_index[0] = -1;
    CHECK(rejects(m));
    m = good;
    m.col_index[1] = 2;  // row of query tile 1 keeps tile 2 (a future tile)
    CHECK(rejects(m));
  }
  SECTION("column inside a kept tile") {
    BlockMask m = good;
    m.column_ptr = {0, 1, 3, 3, 4, 4, 6};  // h0 t1 gets column 10, inside its kept tile 0
    m.column_index = {10, 10, 70, 5, 100, 150};
    CHECK(rejects(m));
    m.column_ptr = {0, 0, 2, 2, 3, 4, 6};  // h1 t2 keeps {0, 2}: column 20 is in tile 0
    m.column_index = {10, 70, 5, 20, 100, 150};
    CHECK(rejects(m));
    m.column_index = {10, 70, 5, 64, 100, 150};  // tile 1 is not kept: fine
    chunkwise::validate(m, probe);
  }
  SECTION("column at or after the row's first position") {
    BlockMask m = good;
    m.column_index[2] = 64;  // h1 t1: tile 1 starts at 64
    CHECK(rejects(m));
    m.column_index[2] = 63;
    chunkwise::validate(m, probe);
    m = good;
    m.column_index[4] = 192;  // h1 t3 starts at 192
    CHECK(rejects(m));
    m.column_index[4] = -1;
    CHECK(rejects(m));
  }
  SECTION("unsorted columns") {
    BlockMask m = good;
    m.column_index = {70, 10, 5, 100, 150};
    CHECK(rejects(m));
    m.column_index = {10, 10, 5, 100, 150};
    CHECK(rejects(m));
  }
  SECTION("wrong shape") {
    BlockMask m = good;
    m.row_ptr.pop_back();  // one row short
    m.col_index.pop_back();
    CHECK(rejects(m));
    m = good;
    m.n_qtiles = 2;
    m.row_ptr = {0, 2, 3, 5, 5, 7};
    m.col_index = {0, 1, 2, 1, 3, 0, 2};
    m.column_ptr.clear();
    m.column_index.clear();
    CHECK(rejects(m));  // the chunk has 3 query tiles
    m = good;
    m.first_qtile = 0;
    CHECK(rejects(m));
    m = good;
    m.n_heads = 1;
    CHECK(rejects(m));
    m = good;
    m.row_ptr[0] = 1;
    CHECK(rejects(m));
    m = good;
    m.row_ptr[2] = 1;  // decreasing
    CHECK(rejects(m));
    m = good;
    m.col_index.push_back(3);  // row_ptr does not end at col_index.size()
    CHECK(rejects(m));
    m = good;
    m.column_ptr.pop_back();
    CHECK(rejects(m));
    m = good;
    m.column_index.pop_back();
    CHECK(rejects(m));
    m = good;
    m.column_ptr.clear();  // columns without a pointer array
    CHECK(rejects(m));
  }
}

TEST_CASE("mask_cost counts kept tiles and columns against the causal tiles", "[sparse]") {
  // Query tiles 1..3 for 2 heads: causal = (2 + 3 + 4) * 2 = 18 tiles.
  const AttentionProbe probe = make_probe(2, 1, 64, 100, 100);
  const BlockMask dense = chunkwise::dense_mask(probe, 64);
  const auto dc = chunkwise::mask_cost(dense);
  CHECK(dc.causal_tiles == 18.0);
  CHECK(dc.computed_tiles == 18.0);
  CHECK(dc.density() == 1.0);
  const BlockMask full = chunkwise::explicit_dense_mask(probe, 64);
  chunkwise::validate(full, probe);
  CHECK(!full.dense);
  CHECK(full.col_index.size() == 18);
  CHECK(full.row_ptr == std::vector<std::int32_t>{0, 2, 5, 9, 11, 14, 18});
  CHECK(chunkwise::mask_cost(full).computed_tiles == 18.0);

  BlockMask m = full;
  m.row_ptr = {0, 2, 3, 5, 5, 7, 8};
  m.col_index = {0, 1, 2, 1, 3, 0, 2, 3};
  m.column_ptr = {0, 0, 2, 2, 3, 3, 5};
  m.column_index = {10, 70, 5, 100, 150};
  chunkwise::validate(m, probe);
  const auto c = chunkwise::mask_cost(m);
  CHECK(c.causal_tiles == 18.0);
  CHECK(c.computed_tiles == 8.0 + 5.0 / 64.0);
  CHECK(std::abs(c.density() - (8.0 + 5.0 / 64.0) / 18.0) < 1e-12);

  // Tile 128: query tiles 0..1 of positions [100, 200): causal (1 + 2) * 2 = 6.
  CHECK(chunkwise::mask_cost(chunkwise::dense_mask(probe, 128)).causal_tiles == 6.0);
  // An empty chunk costs nothing.
  const auto e = chunkwise::mask_cost(chunkwise::dense_mask(make_probe(2, 1, 64, 100, 0), 64));
  CHECK(e.causal_tiles == 0.0);
  CHECK(e.density() == 1.0);
}

TEST_CASE("sparse_attention with a dense or every-tile mask equals paged_attention", "[sparse]") {
  std::mt19937 rng(41);
  struct Chunk {
    int query_begin, query_len;
  };
  // From 0; chunked prefill starting mid-tile; a long chunk over more than one softmax step of
  // keys; a single row.
  const std::vector<Chunk> chunks = {{0, 300}, {100, 150}, {700, 600}, {77, 1}};
  for (const int tile : {64, 128}) {
    for (const auto& [n_heads, n_kv] : {std::pair{4, 4}, std::pair{9, 3}, std::pair{8, 2}}) {
      for (const int d : {64, 128}) {
        for (const Chunk& ch : chunks) {
          if (ch.query_len == 600 && d == 128) continue;  // the long chunk once per tile and GQA ratio
          const int kv_len = ch.query_begin + ch.query_len;
          PagedSeq s = make_seq(16, n_kv, d, kv_len, rng);
          const auto q = chunkwise::test::random_vector(static_cast<std::size_t>(ch.query_len) * n_heads * d,
                                                        rng, -2.0f, 2.0f);
          const float scale = 1.0f / std::sqrt(static_cast<float>(d));
          const std::vector<float> want = dense_reference(s, q, ch.query_begin, n_heads, scale);
          const AttentionProbe probe = make_probe(n_heads, n_kv, d, ch.query_begin, ch.query_len);
          INFO("tile=" << tile << " n_heads=" << n_heads << " n_kv=" << n_kv << " d=" << d
                       << " query_begin=" << ch.query_begin << " query_len=" << ch.query_len);
          std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
          cpu::sparse_attention(q.data(), s.cache(), s.pages, ch.query_begin, ch.query_len,
                                chunkwise::dense_mask(probe, tile), n_heads, scale, out.data());
          CHECK(out == want);  // the dense path is paged_attention itself
          std::fill(out.begin(), out.end(), std::numeric_limits<float>::quiet_NaN());
          cpu::sparse_attention(q.data(), s.cache(), s.pages, ch.query_begin, ch.query_len,
                                chunkwise::explicit_dense_mask(probe, tile), n_heads, scale, out.data());
          CHECK(max_abs_diff(out, want) <= 1e-5);
        }
      }
    }
  }
}

TEST_CASE("sparse_attention matches a naive masked softmax on random masks", "[sparse]") {
  std::mt19937 rng(42);
  struct Case {
    int tile, n_heads, n_kv, d, query_begin, query_len;
    double density;
    bool columns;
  };
  const std::vector<Case> cases = {
      {64, 4, 4, 64, 0, 400, 0.3, true},     {64, 9, 3, 64, 130, 300, 0.2, true},
      {128, 8, 2, 128, 200, 250, 0.3, true}, {64, 6, 3, 128, 64, 192, 0.5, false},
      {128, 4, 1, 64, 900, 300, 0.6, true},  {64, 3, 3, 64, 1000, 20, 0.1, true},
  };
  for (const Case& c : cases) {
    const int kv_len = c.query_begin + c.query_len;
    PagedSeq s = make_seq(16, c.n_kv, c.d, kv_len, rng);
    const auto q = chunkwise::test::random_vector(static_cast<std::size_t>(c.query_len) * c.n_heads * c.d,
                                                  rng, -2.0f, 2.0f);
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    const AttentionProbe probe = make_probe(c.n_heads, c.n_kv, c.d, c.query_begin, c.query_len);
    const BlockMask m = random_mask(probe, c.tile, c.density, c.columns, c.n_heads / c.n_kv, rng);
    chunkwise::validate(m, probe);
    INFO("tile=" << c.tile << " n_heads=" << c.n_heads << " n_kv=" << c.n_kv << " d=" << c.d
                 << " query_begin=" << c.query_begin << " query_len=" << c.query_len);
    std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
    cpu::sparse_attention(q.data(), s.cache(), s.pages, c.query_begin, c.query_len, m, c.n_heads, scale,
                          out.data());
    const std::vector<double> ref = masked_reference(s, q, c.query_begin, c.n_heads, scale, m);
    CHECK(max_abs_diff(out, ref) <= 2e-5);

    // One thread gives the same result.
    cpu::set_num_threads(1);
    std::vector<float> out1(q.size(), std::numeric_limits<float>::quiet_NaN());
    cpu::sparse_attention(q.data(), s.cache(), s.pages, c.query_begin, c.query_len, m, c.n_heads, scale,
                          out1.data());
    cpu::set_num_threads(0);
    CHECK(max_abs_diff(out1, ref) <= 2e-5);
  }
}

TEST_CASE("sparse_attention gives zeros for a row with no kept key", "[sparse]") {
  std::mt19937 rng(43);
  const int n_heads = 2, n_kv = 1, d = 64, query_begin = 64, query_len = 128, tile = 64;
  PagedSeq s = make_seq(16, n_kv, d, query_begin + query_len, rng);
  const auto q = chunkwise::test::random_vector(static_cast<std::size_t>(query_len) * n_heads * d, rng);
  const AttentionProbe probe = make_probe(n_heads, n_kv, d, query_begin, query_len);
  // Query tiles 1 and 2. Head 0: tile 1 keeps nothing, tile 2 keeps {0, 2}. Head 1: tile 1 keeps
  // only the columns {3, 40}, tile 2 keeps {1}.
  BlockMask m = chunkwise::dense_mask(probe, tile);
  m.dense = false;
  m.row_ptr = {0, 0, 2, 2, 3};
  m.col_index = {0, 2, 1};
  m.column_ptr = {0, 0, 0, 2, 2};
  m.column_index = {3, 40};
  chunkwise::validate(m, probe);
  std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
  cpu::sparse_attention(q.data(), s.cache(), s.pages, query_begin, query_len, m, n_heads, 0.125f, out.data());
  const std::vector<double> ref = masked_reference(s, q, query_begin, n_heads, 0.125f, m);
  CHECK(max_abs_diff(out, ref) <= 2e-5);
  for (int r = 0; r < 64; ++r) {
    const float* o = out.data() + static_cast<std::ptrdiff_t>(r) * n_heads * d;  // head 0, tile 1
    CHECK(std::all_of(o, o + d, [](float x) { return x == 0.0f; }));
  }
  // A mask with no key at all.
  BlockMask none = m;
  none.row_ptr = {0, 0, 0, 0, 0};
  none.col_index.clear();
  none.column_ptr.clear();
  none.column_index.clear();
  cpu::sparse_attention(q.data(), s.cache(), s.pages, query_begin, query_len, none, n_heads, 0.125f,
                        out.data());
  CHECK(std::all_of(out.begin(), out.end(), [](float x) { return x == 0.0f; }));
}

TEST_CASE("sparse_attention rejects bad masks and inputs", "[sparse]") {
  std::mt19937 rng(44);
  const int n_heads = 4, n_kv = 2, d = 64, query_begin = 30, query_len = 100;
  PagedSeq s = make_seq(16, n_kv, d, query_begin + query_len, rng);
  const auto q = chunkwise::test::random_vector(static_cast<std::size_t>(query_len) * n_heads * d, rng);
  std::vector<float> out(q.size());
  const AttentionProbe probe = make_probe(n_heads, n_kv, d, query_begin, query_len);
  const BlockMask good = chunkwise::explicit_dense_mask(probe, 64);
  auto code = [&](const BlockMask& m, std::span<const std::int32_t> pages, int heads, int begin, int len) {
    return error_code_of(
        [&] { cpu::sparse_attention(q.data(), s.cache(), pages, begin, len, m, heads, 0.125f, out.data()); });
  };
  cpu::sparse_attention(q.data(), s.cache(), s.pages, query_begin, query_len, good, n_heads, 0.125f,
                        out.data());
  const std::span<const std::int32_t> pages(s.pages);
  CHECK(code(good, pages.first(pages.size() - 1), n_heads, query_begin, query_len) ==
        ErrorCode::kInvalidArgument);
  const std::vector<std::int32_t> negative = {0, 1, 2, 3, 4, 5, 6, -1, 8};
  CHECK(code(good, negative, n_heads, query_begin, query_len) == ErrorCode::kInvalidArgument);
  CHECK(code(good, pages, 3, query_begin, query_len) == ErrorCode::kInvalidArgument);  // not a multiple of 2
  CHECK(code(good, pages, 2, query_begin, query_len) == ErrorCode::kInvalidArgument);  // mask has 4 heads
  CHECK(code(good, pages, n_heads, 70, 60) == ErrorCode::kInvalidArgument);  // first query tile 1, not 0
  CHECK(code(good, pages, n_heads, query_begin, query_len - 40) == ErrorCode::kInvalidArgument);  // 2 tiles
  CHECK(code(good, pages, n_heads, -1, query_len) == ErrorCode::kInvalidArgument);
  BlockMask bad = good;
  bad.col_index[1] = 5;
  CHECK(code(bad, pages, n_heads, query_begin, query_len) == ErrorCode::kInvalidArgument);
  bad = chunkwise::dense_mask(probe, 64);
  bad.tile = 16;
  CHECK(code(bad, pages, n_heads, query_begin, query_len) == ErrorCode::kInvalidArgument);
}

namespace {

// Sequence i of a test batch: rows at positions [first, first + n) over pages 24i .. 24i + 23.
struct BatchSeq {
  int first, n, kv_len;
};

chunkwise::ForwardBatch make_batch(const std::vector<BatchSeq>& seqs, int block_size, std::mt19937& rng) {
  chunkwise::ForwardBatch b;
  b.query_start = {0};
  b.page_start = {0};
  std::uniform_int_distribution<int> token(0, 39);
  for (std::size_t s = 0; s < seqs.size(); ++s) {
    const int base = static_cast<int>(s) * 24;
    for (int p = 0; p < 24; ++p) b.pages.push_back(base + p);
    for (int i = 0; i < seqs[s].n; ++i) {
      const int pos = seqs[s].first + i;
      b.logit_rows.push_back(static_cast<std::int32_t>(b.tokens.size()));
      b.tokens.push_back(token(rng));
      b.positions.push_back(pos);
      b.slots.push_back(static_cast<std::int64_t>(base + pos / block_size) * block_size + pos % block_size);
    }
    b.query_start.push_back(static_cast<std::int32_t>(b.tokens.size()));
    b.page_start.push_back(static_cast<std::int32_t>(b.pages.size()));
    b.kv_len.push_back(seqs[s].kv_len);
  }
  return b;
}

// Returns, per layer, a dense mask, the explicit every-tile mask or a mask with no key at all,
// and records what it was asked.
class TestSelector final : public chunkwise::SparseSelector {
 public:
  enum class Mode { kDense, kExplicit, kAlternate, kEmpty };
  explicit TestSelector(Mode mode) : mode_(mode) {}
  [[nodiscard]] int tile() const override { return 64; }
  [[nodiscard]] int min_kv_len() const override { return 100; }
  BlockMask select(const AttentionProbe& p) override {
    asked.push_back({p.layer, p.query_begin, p.query_len, p.kv_len});
    CHECK(p.n_layers == 2);
    CHECK(p.n_heads == 6);
    CHECK(p.n_kv_heads == 2);
    CHECK(p.head_dim == 16);
    CHECK(p.q != nullptr);
    CHECK(p.k != nullptr);
    if (p.k != nullptr) {
      CHECK(std::all_of(p.k, p.k + static_cast<std::ptrdiff_t>(p.kv_len) * 32,
                        [](float x) { return std::isfinite(x); }));
    }
    const bool explicit_mask = mode_ == Mode::kExplicit || (mode_ == Mode::kAlternate && p.layer == 0);
    if (mode_ == Mode::kEmpty) {
      BlockMask m = chunkwise::dense_mask(p, 64);
      m.dense = false;
      m.row_ptr.assign(static_cast<std::size_t>(m.rows()) + 1, 0);
      return m;
    }
    return explicit_mask ? chunkwise::explicit_dense_mask(p, 64) : chunkwise::dense_mask(p, 64);
  }
  struct Asked {
    int layer, query_begin, query_len, kv_len;
    bool operator==(const Asked&) const = default;
  };
  std::vector<Asked> asked;

 private:
  Mode mode_;
};

}  // namespace

TEST_CASE("CpuBackend::forward attends probed chunks through the selector's mask", "[sparse]") {
  std::mt19937 rng(45);
  const auto model = chunkwise::test::tiny_model(rng, 2);
  const int block_size = 16, vocab = 40;
  // Step 1: a 200-token prefill (probed), a 70-token one (below min_kv_len) and a single row.
  // Step 2: a chunk at positions [200, 330) (probed, starts mid-tile), a decode, and a 100-row chunk
  // at [1, 101) (probed: kv_len 101).
  const std::vector<BatchSeq> step1 = {{0, 200, 200}, {0, 70, 70}, {0, 1, 1}};
  const std::vector<BatchSeq> step2 = {{200, 130, 330}, {70, 1, 71}, {1, 100, 101}};
  std::mt19937 token_rng(46);
  const chunkwise::ForwardBatch b1 = make_batch(step1, block_size, token_rng);
  const chunkwise::ForwardBatch b2 = make_batch(step2, block_size, token_rng);

  auto run = [&](chunkwise::SparseSelector* selector) {
    chunkwise::CpuBackend backend(model, 80, block_size);
    std::vector<float> logits;
    for (const chunkwise::ForwardBatch* b : {&b1, &b2}) {
      chunkwise::ForwardBatch batch = *b;
      batch.sparse = selector;
      std::vector<float> out(batch.logit_rows.size() * vocab);
      backend.forward(batch, out);
      logits.insert(logits.end(), out.begin(), out.end());
    }
    return logits;
  };
  const std::vector<float> ref = run(nullptr);

  using Asked = TestSelector::Asked;
  const std::vector<Asked> expected = {{0, 0, 200, 200}, {1, 0, 200, 200},   {0, 200, 130, 330},
                                       {0, 1, 100, 101}, {1, 200, 130, 330}, {1, 1, 100, 101}};
  SECTION("dense masks: exactly the exact path") {
    TestSelector sel(TestSelector::Mode::kDense);
    CHECK(run(&sel) == ref);
    CHECK(sel.asked == expected);
  }
  SECTION("every-tile masks through sparse_attention: the same logits") {
    TestSelector sel(TestSelector::Mode::kExplicit);
    CHECK(max_abs_diff(run(&sel), ref) <= 1e-4);
    CHECK(sel.asked == expected);
    TestSelector alt(TestSelector::Mode::kAlternate);
    CHECK(max_abs_diff(run(&alt), ref) <= 1e-4);
  }
  SECTION("the mask is used: no keys at all changes the probed rows") {
    TestSelector sel(TestSelector::Mode::kEmpty);
    const std::vector<float> got = run(&sel);
    // The last row of the first step's 200-token prefill.
    const auto row = static_cast<std::ptrdiff_t>(199) * vocab;
    const std::vector<float> a(got.begin() + row, got.begin() + row + vocab),
        b(ref.begin() + row, ref.begin() + row + vocab);
    CHECK(max_abs_diff(a, b) > 1e-3);
  }
  SECTION("a probed sequence whose rows are not one chunk ending at kv_len - 1 is rejected") {
    chunkwise::CpuBackend backend(model, 80, block_size);
    TestSelector sel(TestSelector::Mode::kExplicit);
    chunkwise::ForwardBatch b = make_batch({{0, 150, 160}}, block_size, token_rng);
    b.sparse = &sel;
    std::vector<float> out(b.logit_rows.size() * vocab);
    CHECK(error_code_of([&] { backend.forward(b, out); }) == ErrorCode::kInvalidArgument);
    b.sparse = nullptr;
    backend.forward(b, out);  // the exact path does not care
  }
}
