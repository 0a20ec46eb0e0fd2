// SparseIndexBuilder: the host side of the device mask building (chunkwise/cuda/sparse_index.hpp).
// plan() lays out one grow-only workspace; build() and finish() enqueue the kernels of
// cuda/sparse_index.cu (cuda/sparse_index_kernels.hpp).
#include "chunkwise/cuda/sparse_index.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "sparse_index_kernels.hpp"

namespace chunkwise::cuda {

namespace si = sparse_index;

namespace {

[[noreturn]] void invalid(const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, "SparseIndexBuilder: " + what);
}

enum class Kind { kStreaming, kVerticalSlash, kBlockTopK, kFlexPrefill };

int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

// Offsets of 256-byte aligned parts of one allocation.
class Layout {
 public:
  std::size_t add(std::size_t bytes) {
    const std::size_t off = (size_ + 255) / 256 * 256;
    size_ = off + bytes;
    return off;
  }
  [[nodiscard]] std::size_t size() const { return size_; }

 private:
  std::size_t size_ = 0;
};

template <class P>
const SparseFallback& fallback_of(const P& p) {
  return p.fallback;
}

}  // namespace

struct SparseIndexBuilder::Impl {
  struct Chunk {
    SparseIndexChunk c;
    bool dense = true;
    si::Geometry g;
    int row_base = 0;
    std::size_t bitmap_off = 0;     // words
    std::size_t cols_off = 0;       // ints (vertical-slash column lists)
    std::size_t col_count_off = 0;  // ints
    int col_cap = 0;
    int est_rows = 0;
  };

  SparsePattern pattern;
  Kind kind = Kind::kStreaming;
  int tile = 64;
  SparseIndexShape shape;
  int num_seqs = 0;
  std::vector<int> dense_layers;
  std::vector<Chunk> chunks;
  int n_rows = 0;
  bool columns = false;
  std::vector<std::int32_t> small;  // seq_row_start | chunk_rows | vertical-slash table, uploaded

  DeviceBuffer<std::byte> ws;
  std::int32_t* srs = nullptr;
  std::int32_t* chunk_rows = nullptr;
  si::VsHead* vs_table = nullptr;
  std::int32_t* row_ptr = nullptr;
  std::int32_t* column_ptr = nullptr;
  std::int32_t* col_idx = nullptr;
  std::int32_t* column_idx = nullptr;
  std::int32_t* counts_t = nullptr;
  std::int32_t* counts_c = nullptr;
  std::int32_t* log = nullptr;
  void* scan_temp = nullptr;
  std::size_t scan_bytes = 0;
  std::uint32_t* bitmap = nullptr;
  std::int32_t* cols = nullptr;
  std::int32_t* col_counts = nullptr;
  si::EstimateBuffers est;
  float* kbar = nullptr;
  float* qbar = nullptr;
  std::int32_t* ocnt = nullptr;
  std::uint32_t* band = nullptr;
  si::FlexBuffers flex;
  BlockSparseMaskView view;
  std::size_t log_size = 0;

  [[nodiscard]] const Chunk& chunk(int i) const {
    if (i < 0 || i >= static_cast<int>(chunks.size()))
      invalid("chunk " + std::to_string(i) + " of " + std::to_string(chunks.size()));
    return chunks[static_cast<std::size_t>(i)];
  }
};

SparseIndexBuilder::SparseIndexBuilder() : impl_(std::make_unique<Impl>()) {}
SparseIndexBuilder::~SparseIndexBuilder() = default;
SparseIndexBuilder::SparseIndexBuilder(SparseIndexBuilder&&) noexcept = default;
SparseIndexBuilder& SparseIndexBuilder::operator=(SparseIndexBuilder&&) noexcept = default;

void SparseIndexBuilder::plan(const SparsePattern& pattern, const SparseIndexShape& shape,
                              std::span<const SparseIndexChunk> chunks, int num_seqs, cudaStream_t stream) {
  Impl& m = *impl_;
  if (shape.head_dim != 64 && shape.head_dim != 128)
    invalid("head_dim " + std::to_string(shape.head_dim) + " (64 or 128)");
  if (shape.n_kv_heads <= 0 || shape.n_heads <= 0 || shape.n_heads % shape.n_kv_heads != 0)
    invalid("n_heads must be a positive multiple of n_kv_heads");
  if (shape.n_layers <= 0) invalid("n_layers must be positive");
  if (num_seqs < 0) invalid("negative num_seqs");
  m.pattern = pattern;
  m.shape = shape;
  m.num_seqs = num_seqs;
  m.kind = static_cast<Kind>(pattern.index());
  const SparseFallback& fb =
      std::visit([](const auto& p) -> const SparseFallback& { return fallback_of(p); }, m.pattern);
  m.tile = std::visit([](const auto& p) { return p.tile; }, m.pattern);
  if (m.tile != 64 && m.tile != 128) invalid("tile " + std::to_string(m.tile) + " (64 or 128)");
  m.dense_layers = fb.dense_layers;
  m.columns = m.kind == Kind::kVerticalSlash;
  const int T = m.tile, H = shape.n_heads, Hkv = shape.n_kv_heads, D = shape.head_dim;

  // Per chunk: geometry, rows, bitmap and index capacities; the scratch as the largest chunk needs.
  m.chunks.clear();
  m.n_rows = 0;
  std::int64_t cap_t = 0, cap_c = 0, bitmap_words = 0, cols_ints = 0;
  std::size_t est_part = 0, est_stats = 0, est_keys = 0, est_slash = 0, kbar_n = 0, qbar_n = 0, ocnt_n = 0,
              band_n = 0, pool_n = 0, qmean_n = 0, kw_n = 0, prob_n = 0;
  int prev_seq = -1;
  for (const SparseIndexChunk& in : chunks) {
    if (in.seq <= prev_seq || in.seq >= num_seqs)
      invalid("chunks must name distinct sequences in ascending order");
    prev_seq = in.seq;
    if (in.query_begin < 0 || in.query_len < 1 || in.kv_len != in.query_begin + in.query_len)
      invalid("a chunk needs query_begin >= 0, query_len >= 1 and kv_len = query_begin + query_len");
    Impl::Chunk c;
    c.c = in;
    c.dense = in.query_len <= 1 || in.kv_len < fb.min_kv_len;
    si::Geometry& g = c.g;
    g.tile = T;
    g.n_heads = H;
    g.n_kv_heads = Hkv;
    g.head_dim = D;
    g.query_begin = in.query_begin;
    g.query_len = in.query_len;
    g.kv_len = in.kv_len;
    g.first_qtile = in.query_begin / T;
    g.n_qtiles = (in.kv_len - 1) / T - g.first_qtile + 1;
    g.n_ktiles = g.first_qtile + g.n_qtiles;
    g.words = ceil_div(g.n_ktiles, 32);
    c.row_base = m.n_rows;
    if (!c.dense) {
      const int n = in.kv_len, nk = g.n_ktiles, nq = g.n_qtiles;
      m.n_rows += g.rows();
      c.bitmap_off = static_cast<std::size_t>(bitmap_words);
      bitmap_words += static_cast<std::int64_t>(g.rows()) * g.words;
      std::int64_t per_row_cap = std::numeric_limits<std::int32_t>::max();
      if (const auto* p = std::get_if<StreamingAttentionParams>(&m.pattern))
        per_row_cap = ceil_div(p->sink, T) + ceil_div(p->window, T) + 1;
      if (const auto* p = std::get_if<BlockTopKAttentionParams>(&m.pattern)) per_row_cap = p->top_k;
      if (const auto* p = std::get_if<VerticalSlashAttentionParams>(&m.pattern)) {
        const int fc = std::min(p->forced_columns, n);
        for (int l = 0; l < shape.n_layers; ++l)
          for (int h = 0; h < H; ++h) {
            const VerticalSlashSizes& sz = p->config.sizes(l, h);
            if (!sz.dense) c.col_cap = std::max(c.col_cap, std::clamp(sz.vertical, fc, n));
          }
        c.est_rows = std::min(p->last_queries, in.query_len);
        c.cols_off = static_cast<std::size_t>(cols_ints);
        cols_ints += static_cast<std::int64_t>(H) * std::max(c.col_cap, 1);
        c.col_count_off = 0;  // set below, after the column lists
      }
      if (m.kind == Kind::kFlexPrefill) c.est_rows = std::min(T, in.query_len);
      for (int j = 0; j < nq; ++j) {
        const std::int64_t t = g.first_qtile + j;
        cap_t += static_cast<std::int64_t>(H) * std::min(t + 1, per_row_cap);
        if (m.columns) cap_c += static_cast<std::int64_t>(H) * std::min<std::int64_t>(c.col_cap, t * T);
      }
      const auto Hs = static_cast<std::size_t>(H), ns = static_cast<std::size_t>(n),
                 nks = static_cast<std::size_t>(nk), nqs = static_cast<std::size_t>(nq),
                 Ds = static_cast<std::size_t>(D);
      if (c.est_rows > 0) {
        const auto kb = static_cast<std::size_t>(si::estimate_blocks(n)),
                   rows = static_cast<std::size_t>(c.est_rows);
        est_part = std::max(est_part, Hs * kb * rows);
        est_stats = std::max(est_stats, Hs * rows);
        est_keys = std::max(est_keys, Hs * ns);
        est_slash = std::max(est_slash, Hs * kb * static_cast<std::size_t>(si::estimate_window(c.est_rows)));
      }
      if (m.kind == Kind::kBlockTopK || m.kind == Kind::kFlexPrefill) {
        if (si::pooled_rows_per_cta(nk, D) == 0)
          invalid("a chunk of " + std::to_string(nk) + " key tiles is too long for the pooled scores");
        kbar_n = std::max(kbar_n, static_cast<std::size_t>(Hkv) * nks * Ds);
        qbar_n = std::max(qbar_n, Hs * nqs * Ds);
      }
      if (m.kind == Kind::kVerticalSlash) {
        ocnt_n = std::max(ocnt_n, Hs * (ns + 1));
        band_n = std::max(band_n, Hs * static_cast<std::size_t>(ceil_div(nk, 32) + 1));
      }
      if (m.kind == Kind::kFlexPrefill) {
        if (static_cast<std::int64_t>(nq) * nk >= std::numeric_limits<std::int32_t>::max())
          invalid("a chunk's query tiles x key tiles exceed the int32 range");
        pool_n = std::max(pool_n, Hs * nks);
        qmean_n = std::max(qmean_n, Hs * Ds);
        kw_n = std::max(kw_n, Hs * static_cast<std::size_t>(ceil_div(nk, 32) + 1));
        prob_n = std::max(prob_n, Hs * nqs * nks);
      }
    }
    m.chunks.push_back(c);
  }
  constexpr std::int64_t kMax = std::numeric_limits<std::int32_t>::max();
  if (cap_t >= kMax || cap_c >= kMax || m.n_rows >= kMax / 2)
    invalid("the batch's sparse index may exceed the int32 range");
  std::int64_t col_counts_n = 0;
  for (Impl::Chunk& c : m.chunks) {
    if (c.dense || !m.columns) continue;
    c.col_count_off = static_cast<std::size_t>(col_counts_n);
    col_counts_n += H;
  }

  // The host-side tables: seq_row_start, chunk_rows and (vertical-slash) the per-layer head sizes.
  const auto n_chunks = m.chunks.size();
  m.small.assign(static_cast<std::size_t>(num_seqs) + 1 + n_chunks + 1, 0);
  {
    std::size_t next = 0;
    int row = 0;
    for (int s = 0; s < num_seqs; ++s) {
      m.small[static_cast<std::size_t>(s)] = row;
      if (next < n_chunks && m.chunks[next].c.seq == s) {
        if (!m.chunks[next].dense) row += m.chunks[next].g.rows();
        ++next;
      }
    }
    m.small[static_cast<std::size_t>(num_seqs)] = row;
    std::int32_t* cr = m.small.data() + num_seqs + 1;
    for (std::size_t i = 0; i < n_chunks; ++i) {
      cr[i] = m.chunks[i].row_base;
      cr[i + 1] = m.chunks[i].row_base + (m.chunks[i].dense ? 0 : m.chunks[i].g.rows());
    }
  }
  const std::size_t small_vs = m.small.size();
  if (const auto* p = std::get_if<VerticalSlashAttentionParams>(&m.pattern)) {
    for (int l = 0; l < shape.n_layers; ++l)
      for (int h = 0; h < H; ++h) {
        const VerticalSlashSizes& sz = p->config.sizes(l, h);
        m.small.push_back(sz.vertical);
        m.small.push_back(sz.slash);
        m.small.push_back(sz.dense ? 1 : 0);
      }
  }

  // One allocation.
  const auto R = static_cast<std::size_t>(m.n_rows);
  const int scan_n = m.n_rows + 1;
  m.scan_bytes = std::max<std::size_t>(si::scan_temp_bytes(scan_n), 16);
  m.log_size = static_cast<std::size_t>(shape.n_layers) * n_chunks * 2;
  const std::size_t i32 = sizeof(std::int32_t), f32 = sizeof(float);
  Layout L;
  const std::size_t o_small = L.add(m.small.size() * i32), o_rp = L.add((R + 1) * i32),
                    o_cp = L.add(m.columns ? (R + 1) * i32 : 0),
                    o_ci = L.add(static_cast<std::size_t>(std::max<std::int64_t>(cap_t, 1)) * i32),
                    o_cx = L.add(static_cast<std::size_t>(std::max<std::int64_t>(cap_c, 1)) * i32),
                    o_ct = L.add((R + 1) * i32), o_cc = L.add((R + 1) * i32),
                    o_log = L.add(std::max<std::size_t>(m.log_size, 1) * i32), o_scan = L.add(m.scan_bytes),
                    o_bm = L.add(static_cast<std::size_t>(std::max<std::int64_t>(bitmap_words, 1)) * i32),
                    o_cols = L.add(static_cast<std::size_t>(cols_ints) * i32),
                    o_colc = L.add(static_cast<std::size_t>(col_counts_n) * i32),
                    o_part = L.add(est_part * sizeof(float2)), o_stats = L.add(est_stats * sizeof(float2)),
                    o_vert = L.add(est_keys * f32), o_slash = L.add(est_keys * f32),
                    o_spart = L.add(est_slash * f32), o_kbar = L.add(kbar_n * f32),
                    o_qbar = L.add(qbar_n * f32), o_ocnt = L.add(ocnt_n * i32), o_band = L.add(band_n * i32),
                    o_cover = L.add(m.kind == Kind::kFlexPrefill ? static_cast<std::size_t>(H) * 2 * i32 : 0),
                    o_budget =
                        L.add(m.kind == Kind::kFlexPrefill ? static_cast<std::size_t>(H) * 3 * i32 : 0),
                    o_vpool = L.add(pool_n * f32), o_spool = L.add(pool_n * f32),
                    o_qmean = L.add(qmean_n * f32), o_est = L.add(pool_n * f32), o_vbits = L.add(kw_n * i32),
                    o_obits = L.add(kw_n * i32), o_prob = L.add(prob_n * f32);
  const std::size_t need = L.size();
  if (need > m.ws.size()) m.ws = DeviceBuffer<std::byte>(std::max(need, m.ws.size() + m.ws.size() / 2));
  std::byte* const base = m.ws.get();
  auto at = [&](std::size_t off) { return base + off; };
  m.srs = reinterpret_cast<std::int32_t*>(at(o_small));
  m.chunk_rows = m.srs + num_seqs + 1;
  m.vs_table = m.columns ? reinterpret_cast<si::VsHead*>(m.srs + small_vs) : nullptr;
  m.row_ptr = reinterpret_cast<std::int32_t*>(at(o_rp));
  m.column_ptr = m.columns ? reinterpret_cast<std::int32_t*>(at(o_cp)) : nullptr;
  m.col_idx = reinterpret_cast<std::int32_t*>(at(o_ci));
  m.column_idx = m.columns ? reinterpret_cast<std::int32_t*>(at(o_cx)) : nullptr;
  m.counts_t = reinterpret_cast<std::int32_t*>(at(o_ct));
  m.counts_c = reinterpret_cast<std::int32_t*>(at(o_cc));
  m.log = reinterpret_cast<std::int32_t*>(at(o_log));
  m.scan_temp = at(o_scan);
  m.bitmap = reinterpret_cast<std::uint32_t*>(at(o_bm));
  m.cols = reinterpret_cast<std::int32_t*>(at(o_cols));
  m.col_counts = reinterpret_cast<std::int32_t*>(at(o_colc));
  m.est.part = reinterpret_cast<float2*>(at(o_part));
  m.est.stats = reinterpret_cast<float2*>(at(o_stats));
  m.est.vertical = reinterpret_cast<float*>(at(o_vert));
  m.est.slash = reinterpret_cast<float*>(at(o_slash));
  m.est.slash_part = reinterpret_cast<float*>(at(o_spart));
  m.kbar = reinterpret_cast<float*>(at(o_kbar));
  m.qbar = reinterpret_cast<float*>(at(o_qbar));
  m.ocnt = reinterpret_cast<std::int32_t*>(at(o_ocnt));
  m.band = reinterpret_cast<std::uint32_t*>(at(o_band));
  m.flex.cover = reinterpret_cast<std::int32_t*>(at(o_cover));
  m.flex.budget = reinterpret_cast<std::int32_t*>(at(o_budget));
  m.flex.v_pool = reinterpret_cast<float*>(at(o_vpool));
  m.flex.s_pool = reinterpret_cast<float*>(at(o_spool));
  m.flex.qmean = reinterpret_cast<float*>(at(o_qmean));
  m.flex.est = reinterpret_cast<float*>(at(o_est));
  m.flex.v_bits = reinterpret_cast<std::uint32_t*>(at(o_vbits));
  m.flex.o_bits = reinterpret_cast<std::uint32_t*>(at(o_obits));
  m.flex.prob = reinterpret_cast<float*>(at(o_prob));

  check_cuda(cudaMemcpyAsync(m.srs, m.small.data(), m.small.size() * i32, cudaMemcpyHostToDevice, stream),
             "upload sparse index tables");
  // The counts' last entries stay 0 (the scans' totals), the log 0 for layers never finished.
  check_cuda(cudaMemsetAsync(m.counts_t, 0, (R + 1) * i32, stream), "clear sparse counts");
  check_cuda(cudaMemsetAsync(m.counts_c, 0, (R + 1) * i32, stream), "clear sparse counts");
  check_cuda(cudaMemsetAsync(m.log, 0, std::max<std::size_t>(m.log_size, 1) * i32, stream),
             "clear sparse counts");
  m.view = BlockSparseMaskView{m.tile, m.srs, m.row_ptr, m.col_idx, m.column_ptr, m.column_idx};
}

int SparseIndexBuilder::tile() const {
  return impl_->tile;
}
int SparseIndexBuilder::chunks() const {
  return static_cast<int>(impl_->chunks.size());
}

bool SparseIndexBuilder::dense_layer(int layer) const {
  const auto& d = impl_->dense_layers;
  return std::find(d.begin(), d.end(), layer) != d.end();
}

bool SparseIndexBuilder::dense_chunk(int chunk) const {
  return impl_->chunk(chunk).dense;
}
int SparseIndexBuilder::first_qtile(int chunk) const {
  return impl_->chunk(chunk).g.first_qtile;
}
int SparseIndexBuilder::n_qtiles(int chunk) const {
  return impl_->chunk(chunk).g.n_qtiles;
}

template <class T>
void SparseIndexBuilder::build(int chunk, int layer, const T* q, const BasicPagedKvView<T>& kv,
                               const std::int32_t* pages, float scale, cudaStream_t stream) {
  Impl& m = *impl_;
  const Impl::Chunk& c = m.chunk(chunk);
  if (layer < 0 || layer >= m.shape.n_layers) invalid("layer " + std::to_string(layer) + " out of range");
  if (dense_layer(layer)) invalid("layer " + std::to_string(layer) + " is dense: nothing to build");
  if (c.dense) return;
  if (kv.n_kv_heads != m.shape.n_kv_heads || kv.head_dim != m.shape.head_dim)
    invalid("the KV view's heads or head_dim differ from the planned shape");
  if (kv.block_size < 1 || kv.block_size > 128) invalid("KV block size must be in [1, 128]");
  if (q == nullptr || kv.k == nullptr || pages == nullptr) invalid("null q, K cache or page list");
  const si::Geometry& g = c.g;
  const int tile = m.tile, H = m.shape.n_heads;
  const int row_stride = m.shape.n_kv_heads * m.shape.head_dim;
  const si::Keys<T> keys{kv.k, pages, kv.block_size, row_stride,
                         static_cast<std::int64_t>(kv.block_size) * row_stride};
  std::uint32_t* const bitmap = m.bitmap + c.bitmap_off;
  std::int32_t* const cols = m.cols + c.cols_off;
  std::int32_t* const col_counts = m.col_counts + c.col_count_off;
  switch (m.kind) {
    case Kind::kStreaming: {
      const auto& p = std::get<StreamingAttentionParams>(m.pattern);
      si::streaming_bits(g, ceil_div(p.sink, tile), ceil_div(p.window, tile), bitmap, stream);
      break;
    }
    case Kind::kBlockTopK: {
      const auto& p = std::get<BlockTopKAttentionParams>(m.pattern);
      si::pool_queries(g, q, m.qbar, stream);
      si::pool_keys(g, keys, m.kbar, stream);
      si::block_topk_bits(g, m.qbar, m.kbar, p.top_k, bitmap, stream);
      break;
    }
    case Kind::kVerticalSlash: {
      const auto& p = std::get<VerticalSlashAttentionParams>(m.pattern);
      const si::VsHead* const sizes = m.vs_table + static_cast<std::size_t>(layer) * H;
      const auto* const skip = reinterpret_cast<const std::int32_t*>(sizes) + 2;  // VsHead::dense
      const int band_words = ceil_div(g.n_ktiles, 32) + 1;
      si::last_query_estimate(g, q, keys, c.est_rows, scale, skip, 3, m.est, stream);
      si::vs_select(g, sizes, p.forced_columns, p.forced_diagonals, m.est.vertical, m.est.slash, cols,
                    std::max(c.col_cap, 1), col_counts, m.ocnt, m.band, band_words, stream);
      si::vs_bits(g, sizes, m.ocnt, m.band, band_words, bitmap, stream);
      break;
    }
    case Kind::kFlexPrefill: {
      const auto& p = std::get<FlexPrefillAttentionParams>(m.pattern);
      si::last_query_estimate(g, q, keys, c.est_rows, scale, nullptr, 0, m.est, stream);
      si::pool_keys(g, keys, m.kbar, stream);
      si::FlexParams fp;
      fp.gamma = p.gamma;
      fp.tau = p.tau;
      fp.min_blocks = ceil_div(p.min_budget, tile);
      fp.max_blocks = p.max_budget > 0 ? ceil_div(p.max_budget, tile) : g.n_ktiles;
      fp.scale = scale;
      fp.est_rows = c.est_rows;
      si::FlexBuffers fb = m.flex;
      fb.kwords = ceil_div(g.n_ktiles, 32) + 1;
      si::flex_prefill(g, q, fp, m.est.vertical, m.est.slash, m.kbar, m.qbar, fb, bitmap, stream);
      break;
    }
  }
  si::count_rows(g, bitmap, m.columns ? cols : nullptr, std::max(c.col_cap, 1), col_counts,
                 m.counts_t + c.row_base, m.columns ? m.counts_c + c.row_base : nullptr, stream);
}

const BlockSparseMaskView& SparseIndexBuilder::finish(int layer, cudaStream_t stream) {
  Impl& m = *impl_;
  if (layer < 0 || layer >= m.shape.n_layers) invalid("layer " + std::to_string(layer) + " out of range");
  const int n = m.n_rows + 1;
  si::exclusive_scan(m.counts_t, m.row_ptr, n, m.scan_temp, m.scan_bytes, stream);
  if (m.columns) si::exclusive_scan(m.counts_c, m.column_ptr, n, m.scan_temp, m.scan_bytes, stream);
  for (const Impl::Chunk& c : m.chunks) {
    if (c.dense) continue;
    si::emit_rows(c.g, m.bitmap + c.bitmap_off, m.columns ? m.cols + c.cols_off : nullptr,
                  std::max(c.col_cap, 1), m.col_counts + c.col_count_off, m.row_ptr + c.row_base, m.col_idx,
                  m.columns ? m.column_ptr + c.row_base : nullptr, m.column_idx, stream);
  }
  const auto n_chunks = static_cast<int>(m.chunks.size());
  si::record_counts(m.row_ptr, m.column_ptr, m.chunk_rows, n_chunks,
                    m.log + static_cast<std::size_t>(layer) * static_cast<std::size_t>(n_chunks) * 2, stream);
  return m.view;
}

const std::int32_t* SparseIndexBuilder::counts() const {
  return impl_->log;
}
std::size_t SparseIndexBuilder::counts_size() const {
  return impl_->log_size;
}

void SparseIndexBuilder::summary(int chunk, int tiles, int columns, BlockMask& out) const {
  const Impl& m = *impl_;
  const Impl::Chunk& c = m.chunk(chunk);
  out.tile = m.tile;
  out.n_heads = m.shape.n_heads;
  out.first_qtile = c.g.first_qtile;
  out.n_qtiles = c.g.n_qtiles;
  out.dense = c.dense;
  if (c.dense) {
    out.row_ptr.clear();
    out.col_index.clear();
    out.column_ptr.clear();
    out.column_index.clear();
    return;
  }
  const auto rows = static_cast<std::size_t>(c.g.rows());
  out.row_ptr.resize(rows + 1);
  out.col_index.resize(static_cast<std::size_t>(std::max(tiles, 0)));
  out.column_ptr.resize(columns > 0 ? rows + 1 : 0);
  out.column_index.resize(static_cast<std::size_t>(std::max(columns, 0)));
}

BlockMask SparseIndexBuilder::download(int chunk, cudaStream_t stream) const {
  const Impl& m = *impl_;
  const Impl::Chunk& c = m.chunk(chunk);
  BlockMask out;
  out.tile = m.tile;
  out.n_heads = m.shape.n_heads;
  out.first_qtile = c.g.first_qtile;
  out.n_qtiles = c.g.n_qtiles;
  out.dense = c.dense;
  if (c.dense) return out;
  check_cuda(cudaStreamSynchronize(stream), "sparse index download");
  const auto rows = static_cast<std::size_t>(c.g.rows());
  auto get = [](const std::int32_t* src, std::size_t n) {
    std::vector<std::int32_t> v(n);
    if (n > 0)
      check_cuda(cudaMemcpy(v.data(), src, n * sizeof(std::int32_t), cudaMemcpyDeviceToHost), "download");
    return v;
  };
  out.row_ptr = get(m.row_ptr + c.row_base, rows + 1);
  const std::int32_t r0 = out.row_ptr.front();
  for (std::int32_t& x : out.row_ptr) x -= r0;
  out.col_index = get(m.col_idx + r0, static_cast<std::size_t>(out.row_ptr.back()));
  if (m.columns) {
    out.column_ptr = get(m.column_ptr + c.row_base, rows + 1);
    const std::int32_t c0 = out.column_ptr.front();
    for (std::int32_t& x : out.column_ptr) x -= c0;
    out.column_index = get(m.column_idx + c0, static_cast<std::size_t>(out.column_ptr.back()));
    if (out.column_index.empty()) out.column_ptr.clear();  // as MaskBuilder: no columns, no pointers
  }
  return out;
}

std::size_t SparseIndexBuilder::workspace_bytes() const {
  return impl_->ws.bytes();
}

template void SparseIndexBuilder::build<bf16>(int, int, const bf16*, const BasicPagedKvView<bf16>&,
                                              const std::int32_t*, float, cudaStream_t);
template void SparseIndexBuilder::build<f16>(int, int, const f16*, const BasicPagedKvView<f16>&,
                                             const std::int32_t*, float, cudaStream_t);

}  // namespace chunkwise::cuda
