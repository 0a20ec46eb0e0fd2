// The stock sparse-attention policies on synthetic probes, without a model: masks are valid,
// keep what a planted pattern says they must, cover everything at full-density settings, fall
// back to dense where told, and reject bad parameters with a typed error.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/policy/sparse/any_sparse_attention.hpp"
#include "chunkwise/policy/sparse/block_topk_attention.hpp"
#include "chunkwise/policy/sparse/dense_attention.hpp"
#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"
#include "chunkwise/policy/sparse/flex_prefill_attention.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"
#include "chunkwise/policy/sparse/streaming_attention.hpp"
#include "chunkwise/policy/sparse/vertical_slash_attention.hpp"
#include "error_code.hpp"

using namespace chunkwise;

static_assert(SparsePolicy<DenseAttention>);
static_assert(SparsePolicy<StreamingAttention>);
static_assert(SparsePolicy<BlockTopKAttention>);
static_assert(SparsePolicy<VerticalSlashAttention>);
static_assert(SparsePolicy<FlexPrefillAttention>);
static_assert(SparsePolicy<AnySparseAttention>);

namespace {

// Random queries/keys for a chunk [query_begin, kv_len) with n_heads / n_kv_heads heads.
struct ProbeData {
  std::vector<float> q, k;
  AttentionProbe probe;
  ProbeData(int query_begin, int kv_len, int n_heads = 4, int n_kv_heads = 2, int d = 16, unsigned seed = 1) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    q.resize(static_cast<std::size_t>(kv_len - query_begin) * n_heads * d);
    k.resize(static_cast<std::size_t>(kv_len) * n_kv_heads * d);
    for (float& x : q) x = dist(rng);
    for (float& x : k) x = dist(rng);
    probe = AttentionProbe{0,
                           1,
                           n_heads,
                           n_kv_heads,
                           d,
                           query_begin,
                           kv_len - query_begin,
                           kv_len,
                           1.0f / std::sqrt(static_cast<float>(d)),
                           nullptr,
                           nullptr};
    refresh();
  }
  void refresh() {
    probe.q = q.data();
    probe.k = k.data();
  }
  float* key(int pos, int kv_head) {
    return k.data() + (static_cast<std::size_t>(pos) * probe.n_kv_heads + kv_head) * probe.head_dim;
  }
  float* query(int row, int head) {
    return q.data() + (static_cast<std::size_t>(row) * probe.n_heads + head) * probe.head_dim;
  }
};

std::set<int> tiles_of(const BlockMask& m, int head, int j) {
  const int r = head * m.n_qtiles + j;
  return {m.col_index.begin() + m.row_ptr[static_cast<std::size_t>(r)],
          m.col_index.begin() + m.row_ptr[static_cast<std::size_t>(r) + 1]};
}

std::set<int> columns_of(const BlockMask& m, int head, int j) {
  if (!m.has_columns()) return {};
  const int r = head * m.n_qtiles + j;
  return {m.column_index.begin() + m.column_ptr[static_cast<std::size_t>(r)],
          m.column_index.begin() + m.column_ptr[static_cast<std::size_t>(r) + 1]};
}

bool covers_everything(const BlockMask& m) {
  if (m.dense) return true;
  const MaskCost c = mask_cost(m);
  return c.computed_tiles == c.causal_tiles && !m.has_columns();
}

SparseFallback no_fallback() {
  return SparseFallback{0, {}};
}

}  // namespace

TEST_CASE("every stock policy returns valid masks, for whole prompts and later chunks", "[sparse]") {
  for (const int begin : {0, 300}) {
    ProbeData d(begin, 2000);
    for (const std::string spec :
         {"streaming:min_kv_len=0,sink=64,window=128", "block-topk:min_kv_len=0,top_k=4",
          "vertical-slash:min_kv_len=0,vertical=40,slash=120",
          "flex-prefill:min_kv_len=0,min_budget=128,max_budget=512",
          "streaming:tile=128,min_kv_len=0,window=256",
          "vertical-slash:tile=128,min_kv_len=0,vertical=40,slash=60"}) {
      CAPTURE(spec, begin);
      AnySparseAttention policy = make_sparse_policy(spec);
      const BlockMask m = policy.select(d.probe);
      REQUIRE_FALSE(m.dense);
      REQUIRE_NOTHROW(validate(m, d.probe));
      CHECK(m.first_qtile == begin / m.tile);
      CHECK(m.n_qtiles == 1999 / m.tile - begin / m.tile + 1);
      const double density = mask_cost(m).density();
      CHECK(density > 0.0);
      CHECK(density < 1.0);
      // Every row keeps its diagonal tile: no query is left without keys.
      for (int h = 0; h < m.n_heads; ++h)
        for (int j = 0; j < m.n_qtiles; ++j) CHECK(tiles_of(m, h, j).count(m.first_qtile + j) == 1);
    }
  }
}

TEST_CASE("at full-density settings every policy keeps every causal tile", "[sparse]") {
  ProbeData d(200, 900);
  for (const std::string spec : {"streaming:min_kv_len=0,window=100000", "block-topk:min_kv_len=0,top_k=1000",
                                 "vertical-slash:min_kv_len=0,vertical=100000,slash=100000",
                                 "flex-prefill:min_kv_len=0,min_budget=100000"}) {
    CAPTURE(spec);
    const BlockMask m = make_sparse_policy(spec).select(d.probe);
    CHECK(covers_everything(m));
    const BlockMask all = explicit_dense_mask(d.probe, m.tile);
    CHECK(m.col_index == all.col_index);
    CHECK(m.row_ptr == all.row_ptr);
  }
}

TEST_CASE("short chunks and dense layers fall back to the exact path", "[sparse]") {
  ProbeData d(0, 500);
  CHECK(make_sparse_policy("flex-prefill").select(d.probe).dense);  // 500 < min_kv_len 1024
  CHECK_FALSE(make_sparse_policy("flex-prefill:min_kv_len=500").select(d.probe).dense);
  d.probe.layer = 3;
  CHECK(make_sparse_policy("streaming:min_kv_len=0,dense_layers=1/3").select(d.probe).dense);
  CHECK_FALSE(make_sparse_policy("streaming:min_kv_len=0,dense_layers=1/2").select(d.probe).dense);
  CHECK(DenseAttention{}.select(d.probe).dense);
}

TEST_CASE("streaming attention keeps the sink and the window before each tile", "[sparse]") {
  ProbeData d(0, 1024);
  StreamingAttention::Params p;
  p.sink = 64;
  p.window = 128;
  p.fallback = no_fallback();
  const BlockMask m = StreamingAttention(p).select(d.probe);
  CHECK(tiles_of(m, 0, 15) == std::set<int>{0, 13, 14, 15});
  CHECK(tiles_of(m, 3, 1) == std::set<int>{0, 1});
  CHECK_FALSE(m.has_columns());
}

TEST_CASE("block top-k finds the key tile the pooled queries point at", "[sparse]") {
  ProbeData d(0, 1024, 2, 1, 16);
  // Every query of head 1 and every key of tile 5 share a large component: tile 5 wins for every
  // query tile after it.
  for (int r = 0; r < d.probe.query_len; ++r) d.query(r, 1)[0] = 8.0f;
  for (int pos = 5 * 64; pos < 6 * 64; ++pos) d.key(pos, 0)[0] = 8.0f;
  BlockTopKAttention::Params p;
  p.top_k = 3;
  p.fallback = no_fallback();
  const BlockMask m = BlockTopKAttention(p).select(d.probe);
  for (int j = 6; j < m.n_qtiles; ++j) CHECK(tiles_of(m, 1, j) == std::set<int>{0, 5, j});
}

TEST_CASE("vertical-slash keeps a planted column and a planted diagonal", "[sparse]") {
  ProbeData d(0, 2048, 2, 1, 16);
  d.probe.scale = 1.0f;
  // Key 777 attracts every query (a vertical line); each query also attracts the key 300 before
  // it (a slash at offset 300), on top of random noise.
  for (int r = 0; r < d.probe.query_len; ++r) {
    for (int h = 0; h < 2; ++h) d.query(r, h)[0] = 3.0f;
  }
  d.key(777, 0)[0] = 6.0f;
  for (int r = 300; r < d.probe.query_len; ++r) {
    d.query(r, 0)[1] = 3.0f;
    d.key(r - 300, 0)[1] = 0;  // keep it clean
  }
  VerticalSlashAttention::Params p;
  p.fallback = no_fallback();
  p.config.default_sizes = {31, 101, false};  // the forced 30 columns + 1, the forced 100 diagonals + 1
  const BlockMask m = VerticalSlashAttention(p).select(d.probe);
  // Rows after tile 12 (position 768+) see column 777 as a column or inside a kept tile.
  for (int j = 13; j < m.n_qtiles; ++j) {
    const bool kept = columns_of(m, 0, j).count(777) == 1 || tiles_of(m, 0, j).count(777 / 64) == 1;
    CHECK(kept);
  }
  // The forced columns 0..29 are there for every row past tile 0.
  for (int j = 1; j < m.n_qtiles; ++j) {
    const auto cols = columns_of(m, 1, j);
    const auto tiles = tiles_of(m, 1, j);
    CHECK((tiles.count(0) == 1 || cols.count(29) == 1));
  }
}

TEST_CASE("vertical-slash turns diagonal bands into the key tiles they touch", "[sparse]") {
  ProbeData d(0, 1024, 1, 1, 8);
  VerticalSlashAttention::Params p;
  p.fallback = no_fallback();
  p.forced_columns = 0;
  p.forced_diagonals = 1;
  p.config.default_sizes = {0, 1, false};  // only the main diagonal
  BlockMask m = VerticalSlashAttention(p).select(d.probe);
  for (int j = 0; j < m.n_qtiles; ++j) CHECK(tiles_of(m, 0, j) == std::set<int>{j});
  p.forced_diagonals = 100;  // offsets 0..99: tile j's band reaches back to position 64j - 99
  p.config.default_sizes = {0, 100, false};
  m = VerticalSlashAttention(p).select(d.probe);
  CHECK(tiles_of(m, 0, 0) == std::set<int>{0});
  CHECK(tiles_of(m, 0, 1) == std::set<int>{0, 1});
  for (int j = 2; j < m.n_qtiles; ++j) CHECK(tiles_of(m, 0, j) == std::set<int>{j - 2, j - 1, j});
}

TEST_CASE("flex-prefill keeps the planted column tile and honours its budget", "[sparse]") {
  ProbeData d(0, 4096, 2, 1, 16);
  d.probe.scale = 1.0f;
  for (int r = 0; r < d.probe.query_len; ++r) d.query(r, 0)[0] = 2.0f;
  for (int pos = 1280; pos < 1290; ++pos) d.key(pos, 0)[0] = 5.0f;  // tile 10 (of 128)
  FlexPrefillAttention::Params p;
  p.fallback = no_fallback();
  p.min_budget = 256;
  const BlockMask m = FlexPrefillAttention(p).select(d.probe);
  REQUIRE_NOTHROW(validate(m, d.probe));
  for (int j = 11; j < m.n_qtiles; ++j) CHECK(tiles_of(m, 0, j).count(10) == 1);
  CHECK(mask_cost(m).density() < 0.9);
  // gamma = 1 takes everything the estimate has mass on: denser than gamma 0.5.
  p.gamma = 0.5;
  const double low = mask_cost(FlexPrefillAttention(p).select(d.probe)).density();
  p.gamma = 1.0;
  const double high = mask_cost(FlexPrefillAttention(p).select(d.probe)).density();
  CHECK(low < high);
}

TEST_CASE("a selector counts the cost of the masks it hands out", "[sparse]") {
  ProbeData d(0, 1024);
  PolicySelector<AnySparseAttention> s(make_sparse_policy("streaming:min_kv_len=0,sink=64,window=64"));
  const BlockMask m = s.select(d.probe);
  CHECK(s.stats().selections == 1);
  CHECK(s.stats().dense_fallbacks == 0);
  CHECK(s.stats().density() == Approx(mask_cost(m).density()));
  // Rows keep {0, t - 1, t}: 1 + 2 + 14 * 3 of 136 causal tiles.
  CHECK(s.stats().density() == Approx(45.0 / 136.0));
}

TEST_CASE("bad sparse specs and parameters are typed errors", "[sparse]") {
  using test::error_code;
  for (const std::string spec :
       {"nope", "streaming:tile=32", "streaming:sink=-1", "streaming:window", "streaming:frobs=1",
        "block-topk:top_k=1", "block-topk:top_k=x", "flex-prefill:gamma=0", "flex-prefill:gamma=1.5",
        "flex-prefill:tau=-1", "flex-prefill:min_budget=2048,max_budget=1024", "flex-prefill:gamma=0.9x",
        "vertical-slash:vertical=-1", "vertical-slash:config=/nonexistent/x.json", "dense:tile=64",
        "streaming:dense_layers=1/x", "streaming:min_kv_len=-5"}) {
    CAPTURE(spec);
    CHECK(error_code([&] { (void)make_sparse_policy(spec); }) == ErrorCode::kInvalidArgument);
  }
}

TEST_CASE("vertical-slash configs round-trip and malformed files are rejected", "[sparse]") {
  VerticalSlashConfig c;
  c.model = "test";
  c.default_sizes = {100, 200, false};
  c.heads = {{{10, 20, false}, {0, 0, true}}, {{30, 40, false}}};
  const std::string path = "test_vs_config.json";
  save_vertical_slash_config(c, path);
  const VerticalSlashConfig back = load_vertical_slash_config(path);
  CHECK(back.heads == c.heads);
  CHECK(back.default_sizes == c.default_sizes);
  CHECK(back.sizes(0, 1).dense);
  CHECK(back.sizes(1, 5) == c.default_sizes);  // heads it does not list
  CHECK(back.sizes(7, 0) == c.default_sizes);
  for (const std::string bad :
       {"{", "[]", R"({"format": "other"})", R"({"format": "chunkwise-vertical-slash/1", "heads": [[[1]]]})",
        R"({"format": "chunkwise-vertical-slash/1", "heads": [[[1, -2]]]})",
        R"({"format": "chunkwise-vertical-slash/1", "heads": 3})"}) {
    CAPTURE(bad);
    std::ofstream(path) << bad;
    CHECK(test::error_code([&] { (void)load_vertical_slash_config(path); }) == ErrorCode::kInvalidArgument);
  }
  std::remove(path.c_str());
}

TEST_CASE("attention recall is 1 for everything, lower for less, and exact on a hand case", "[sparse]") {
  ProbeData d(0, 256, 1, 1, 4);
  std::vector<int> rows{255, 200, 130};
  const BlockMask all = explicit_dense_mask(d.probe, 64);
  CHECK(detail::attention_recall(d.probe, all, 0, rows) == Approx(1.0));
  StreamingAttention::Params p;
  p.sink = 0;
  p.window = 0;
  p.fallback = no_fallback();
  const BlockMask diag = StreamingAttention(p).select(d.probe);
  const double r = detail::attention_recall(d.probe, diag, 0, rows);
  CHECK(r > 0.0);
  CHECK(r < 1.0);
  // All-zero queries: uniform attention, so the diagonal tile of row 255 holds 64 of 256 keys.
  std::fill(d.q.begin(), d.q.end(), 0.0f);
  const std::vector<int> last{255};
  CHECK(detail::attention_recall(d.probe, diag, 0, last) == Approx(64.0 / 256.0));
}

TEST_CASE("stock policies describe themselves as data; dense and custom ones do not", "[sparse]") {
  PolicySelector<AnySparseAttention> flex(make_sparse_policy("flex-prefill:gamma=0.95"));
  REQUIRE(flex.pattern() != nullptr);
  REQUIRE(std::holds_alternative<FlexPrefillAttentionParams>(*flex.pattern()));
  CHECK(std::get<FlexPrefillAttentionParams>(*flex.pattern()).gamma == 0.95);
  PolicySelector<StreamingAttention> streaming(StreamingAttention{});
  REQUIRE(streaming.pattern() != nullptr);
  CHECK(std::get<StreamingAttentionParams>(*streaming.pattern()).window == 1024);
  PolicySelector<AnySparseAttention> dense(make_sparse_policy("dense"));
  CHECK(dense.pattern() == nullptr);
  // A mask a backend built itself from the pattern is counted like one select() returned.
  ProbeData d(0, 1024);
  const BlockMask m = StreamingAttention(StreamingAttentionParams{64, 64, 64, no_fallback()}).select(d.probe);
  streaming.record(m, 0.5);
  CHECK(streaming.stats().selections == 1);
  CHECK(streaming.stats().select_s == 0.5);
  CHECK(streaming.stats().density() == Approx(mask_cost(m).density()));
}
