// PagedAttention: plan() partitions a ragged batch into prefill query tiles, decode rows and KV
// splits (from the host copies of the metadata) and uploads the work list; run() launches the
// prefill, decode and merge kernels over it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "attention_internal.cuh"
#include "chunkwise/core/error.hpp"

namespace chunkwise::cuda {

using attn::DecodeItem;
using attn::MergeItem;
using attn::PrefillItem;

namespace {

[[noreturn]] void invalid(const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, "PagedAttention: " + what);
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// Host memory the work list is staged in before its async upload (pinned, so the copy does not
// synchronise the stream). Two of them alternate; one is rewritten only after its copy is done.
struct Staging {
  void* p = nullptr;
  std::size_t cap = 0;
  cudaEvent_t done = nullptr;
  bool pending = false;

  Staging() = default;
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() {
    if (done) {
      if (pending) cudaEventSynchronize(done);
      cudaEventDestroy(done);
    }
    if (p) cudaFreeHost(p);
  }
  void* acquire(std::size_t bytes) {
    if (pending) {
      check_cuda(cudaEventSynchronize(done), "cudaEventSynchronize(attention plan upload)");
      pending = false;
    }
    if (!done) check_cuda(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    if (bytes > cap) {
      if (p) check_cuda(cudaFreeHost(p), "cudaFreeHost");
      p = nullptr;
      cap = std::max(bytes, cap * 2);
      check_cuda(cudaMallocHost(&p, cap), "cudaMallocHost(attention plan)");
    }
    return p;
  }
};

// The KV split length (a multiple of `align`) for work whose pieces have `lens` keys, each piece
// `units` CTAs when unsplit, on `slots` resident CTAs: the n <= max_splits minimising
// waves x (split length + per-CTA overhead), plus a merge penalty when n > 1; ties go to fewer
// splits. Returns the longest length (no split) when nothing beats it.
std::int64_t choose_split_len(const std::vector<std::int64_t>& lens, std::int64_t units, std::int64_t slots,
                              std::int64_t align, std::int64_t min_len, int max_splits) {
  std::int64_t max_len = 0;
  for (const std::int64_t l : lens) max_len = std::max(max_len, l);
  if (max_len <= 0) return 1;
  constexpr std::int64_t kOverhead = 128;      // keys' worth of fixed cost per CTA
  constexpr std::int64_t kMergePenalty = 128;  // keys' worth of the extra merge launch
  std::int64_t best_len = max_len;
  double best_cost = std::numeric_limits<double>::infinity();
  for (int n = 1; n <= max_splits; ++n) {
    std::int64_t len = ceil_div(ceil_div(max_len, n), align) * align;
    if (n > 1 && (len < min_len || len >= max_len)) {
      if (len < min_len) break;
      continue;
    }
    if (n == 1) len = max_len;
    std::int64_t ctas = 0;
    for (const std::int64_t l : lens) ctas += ceil_div(std::max<std::int64_t>(l, 1), len) * units;
    const std::int64_t waves = ceil_div(ctas, std::max<std::int64_t>(slots, 1));
    const double cost =
        static_cast<double>(waves) * static_cast<double>(len + kOverhead) + (n > 1 ? kMergePenalty : 0);
    if (cost < best_cost) {
      best_cost = cost;
      best_len = len;
    }
  }
  return best_len;
}

}  // namespace

struct PagedAttention::Impl {
  // The plan.
  bool planned = false;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0, block_size = 0, sparse_tile = 0;
  int num_seqs = 0, rows = 0;
  int tile_rows = 64, head_groups = 1;
  bool use_wgmma = false;  // the prefill tiles run the Hopper kernel
  int n_prefill = 0, n_decode = 0, n_merge = 0;
  std::size_t n_partials = 0;
  AttentionPlanStats stats;
  AttentionPlanOptions options;

  // Device side: the work list [prefill][decode][merge] and the split partials.
  DeviceBuffer<std::int32_t> work;
  DeviceBuffer<float> part_o, part_lse;
  std::size_t off_decode = 0, off_merge = 0;  // in int32 units
  Staging staging[2];
  int next_staging = 0;

  // Per device: SM count and resident CTAs per SM of each kernel (cudaFuncSetAttribute done).
  int device = -1;
  int num_sms = 1;
  int occ_prefill[2][2] = {{1, 1}, {1, 1}};  // [d64, d128][64 rows, 128 rows]
  int occ_decode[2] = {1, 1};
  bool wgmma = false;  // the Hopper prefill kernel runs on this device

  std::vector<PrefillItem> prefill;
  std::vector<DecodeItem> decode;
  std::vector<MergeItem> merge;

  void prepare_device() {
    int dev = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    if (dev == device) return;
    check_cuda(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, dev),
               "cudaDeviceGetAttribute");
    for (int d = 0; d < 2; ++d) {
      const int hd = d == 0 ? 64 : 128;
      occ_prefill[d][0] = attn::prepare_prefill(hd, 64);
      occ_prefill[d][1] = attn::prepare_prefill(hd, 128);
      occ_decode[d] = attn::prepare_decode(hd);
    }
    wgmma = attn::wgmma_prefill_available();
    if (wgmma) {
      attn::prepare_prefill_wgmma(64);
      attn::prepare_prefill_wgmma(128);
    }
    device = dev;
  }

  void validate(HostIndexSpan qs, HostIndexSpan ps, HostIndexSpan kvl, HostIndexSpan pos) const {
    if (!(head_dim == 64 || head_dim == 128))
      invalid("head_dim " + std::to_string(head_dim) + " is not supported (64 or 128)");
    if (!(n_kv_heads > 0 && n_heads > 0 && n_heads % n_kv_heads == 0))
      invalid("n_heads (" + std::to_string(n_heads) + ") must be a positive multiple of n_kv_heads (" +
              std::to_string(n_kv_heads) + ")");
    if (!(block_size >= 1 && block_size <= 128))
      invalid("block_size " + std::to_string(block_size) + " is outside 1..128");
    if (!(sparse_tile == 0 || sparse_tile == 64 || sparse_tile == 128))
      invalid("sparse_tile " + std::to_string(sparse_tile) + " is not 0, 64 or 128");
    if (qs.size == 0) invalid("query_start is empty");
    const std::size_t n_seq = qs.size - 1;
    if (!(ps.size == n_seq + 1 && kvl.size == n_seq))
      invalid("query_start has " + std::to_string(qs.size) + " entries, page_start " +
              std::to_string(ps.size) + " and kv_len " + std::to_string(kvl.size) +
              "; expected n_seq + 1, n_seq + 1 and n_seq");
    if (!(qs[0] == 0 && ps[0] == 0)) invalid("query_start and page_start must start at 0");
    for (std::size_t s = 0; s < n_seq; ++s) {
      if (!(qs[s + 1] >= qs[s] && ps[s + 1] >= ps[s]))
        invalid("query_start and page_start must be non-decreasing");
    }
    if (static_cast<std::size_t>(qs[n_seq]) != pos.size)
      invalid("q_pos has " + std::to_string(pos.size) + " entries, query_start says " +
              std::to_string(qs[n_seq]));
    for (std::size_t s = 0; s < n_seq; ++s) {
      const std::int64_t capacity = static_cast<std::int64_t>(ps[s + 1] - ps[s]) * block_size;
      if (!(kvl[s] >= 0 && kvl[s] <= capacity))
        invalid("sequence " + std::to_string(s) + " has kv_len " + std::to_string(kvl[s]) +
                " but its pages hold " + std::to_string(capacity) + " tokens");
      for (std::int32_t r = qs[s]; r < qs[s + 1]; ++r) {
        const std::int32_t p = pos[static_cast<std::size_t>(r)];
        if (!(p >= 0 && p < kvl[s]))
          invalid("query row " + std::to_string(r) + " at position " + std::to_string(p) +
                  " is outside its sequence's cache of " + std::to_string(kvl[s]) + " tokens");
        if (sparse_tile > 0 && r > qs[s] && p != pos[static_cast<std::size_t>(r - 1)] + 1)
          invalid("with sparse_tile, the rows of a sequence must sit at consecutive positions (row " +
                  std::to_string(r) + ")");
      }
    }
  }

  void plan_prefill(HostIndexSpan qs, HostIndexSpan pos) {
    const int d_idx = head_dim == 128 ? 1 : 0;
    // Query tile rows: the mask's tile; else 128 when that still fills the GPU and wastes little
    // on padding, else 64.
    if (sparse_tile > 0) {
      tile_rows = sparse_tile;
    } else if (options.tile_rows == 64 || options.tile_rows == 128) {
      tile_rows = options.tile_rows;
    } else if (wgmma && !options.portable_prefill) {
      tile_rows = 128;  // the Hopper kernel's tile: at half a tile it still beats the sm_80 kernel
    } else {
      std::int64_t tiles64 = 0, tiles128 = 0;
      for (int s = 0; s < num_seqs; ++s) {
        const int n = qs[static_cast<std::size_t>(s) + 1] - qs[static_cast<std::size_t>(s)];
        if (n <= 1) continue;
        tiles64 += ceil_div(n, 64);
        tiles128 += ceil_div(n, 128);
      }
      const bool fills = tiles128 * n_heads >= static_cast<std::int64_t>(num_sms) * occ_prefill[d_idx][1];
      tile_rows = (fills && tiles128 * 128 * 4 <= tiles64 * 64 * 5) ? 128 : 64;
    }
    const int bm = tile_rows;
    use_wgmma = wgmma && !options.portable_prefill && bm == 128;
    auto add_tile = [&](int s, int r0, int n, int qtile_local, int n_qtiles) {
      PrefillItem it{};
      it.seq = s;
      it.row_begin = r0;
      it.n_rows = n;
      int lo = std::numeric_limits<int>::max(), hi = -1;
      for (int r = r0; r < r0 + n; ++r) {
        lo = std::min(lo, pos[static_cast<std::size_t>(r)]);
        hi = std::max(hi, pos[static_cast<std::size_t>(r)]);
      }
      it.min_pos = lo;
      it.max_pos = hi;
      it.kv_begin = 0;
      it.kv_end = hi + 1;
      it.qtile_local = qtile_local;
      it.n_qtiles = n_qtiles;
      it.partial_base = -1;
      it.partial_stride = 0;
      prefill.push_back(it);
    };
    for (int s = 0; s < num_seqs; ++s) {
      const int r0 = qs[static_cast<std::size_t>(s)], r1 = qs[static_cast<std::size_t>(s) + 1];
      if (r1 - r0 <= 1) continue;
      if (sparse_tile > 0) {
        // Tiles by absolute position (the rows sit at consecutive positions, checked).
        const int p0 = pos[static_cast<std::size_t>(r0)];
        const int first = p0 / bm, last = pos[static_cast<std::size_t>(r1) - 1] / bm;
        for (int t = first; t <= last; ++t) {
          const int a = std::max(r0, r0 + t * bm - p0), b = std::min(r1, r0 + (t + 1) * bm - p0);
          add_tile(s, a, b - a, t - first, last - first + 1);
        }
      } else {
        const int n_tiles = static_cast<int>(ceil_div(r1 - r0, bm));
        for (int t = 0; t < n_tiles; ++t) {
          const int a = r0 + t * bm;
          add_tile(s, a, std::min(bm, r1 - a), t, n_tiles);
        }
      }
    }
    if (prefill.empty()) return;

    // KV splits when the tiles alone leave the GPU idle (dense only: a mask row is one CTA).
    std::int64_t split_len = 0;
    if (sparse_tile == 0 && options.prefill_split_keys >= 0) {
      if (options.prefill_split_keys > 0) {
        split_len = ceil_div(options.prefill_split_keys, attn::kKeyTile) * attn::kKeyTile;
      } else {
        const std::int64_t slots =
            static_cast<std::int64_t>(num_sms) * (use_wgmma ? 1 : occ_prefill[d_idx][bm == 128 ? 1 : 0]);
        if (static_cast<std::int64_t>(prefill.size()) * n_heads < slots) {
          std::vector<std::int64_t> lens;
          lens.reserve(prefill.size());
          for (const PrefillItem& it : prefill) lens.push_back(it.kv_end);
          split_len = choose_split_len(lens, n_heads, slots, attn::kKeyTile, 512, 8);
        }
      }
    }
    if (split_len > 0) {
      std::vector<PrefillItem> split;
      for (const PrefillItem& it : prefill) {
        const int n_split = static_cast<int>(ceil_div(it.kv_end, split_len));
        if (n_split <= 1) {
          split.push_back(it);
          continue;
        }
        const auto base = static_cast<std::int32_t>(n_partials);
        n_partials += static_cast<std::size_t>(it.n_rows) * static_cast<std::size_t>(n_split);
        for (int k = 0; k < n_split; ++k) {
          PrefillItem p = it;
          p.kv_begin = static_cast<std::int32_t>(k * split_len);
          p.kv_end = static_cast<std::int32_t>(std::min<std::int64_t>((k + 1) * split_len, it.kv_end));
          p.partial_base = base + k;
          p.partial_stride = n_split;
          split.push_back(p);
        }
        for (int i = 0; i < it.n_rows; ++i)
          merge.push_back({it.row_begin + i, base + i * n_split, n_split, 0});
        stats.prefill_splits = std::max(stats.prefill_splits, n_split);
      }
      prefill = std::move(split);
    }
    // Longest first, so that the last wave is made of short CTAs.
    std::stable_sort(prefill.begin(), prefill.end(), [](const PrefillItem& x, const PrefillItem& y) {
      return x.kv_end - x.kv_begin > y.kv_end - y.kv_begin;
    });
  }

  void plan_decode(HostIndexSpan qs, HostIndexSpan pos) {
    const int d_idx = head_dim == 128 ? 1 : 0;
    std::vector<std::int64_t> lens;
    std::vector<std::pair<int, int>> rows_;  // (row, seq)
    for (int s = 0; s < num_seqs; ++s) {
      const int r0 = qs[static_cast<std::size_t>(s)], r1 = qs[static_cast<std::size_t>(s) + 1];
      if (r1 - r0 != 1) continue;
      rows_.emplace_back(r0, s);
      lens.push_back(static_cast<std::int64_t>(pos[static_cast<std::size_t>(r0)]) + 1);
    }
    if (rows_.empty()) return;
    std::int64_t split_len = 0;
    if (options.decode_split_keys > 0) {
      split_len = ceil_div(options.decode_split_keys, attn::kDecodeStageKeys) * attn::kDecodeStageKeys;
    } else if (options.decode_split_keys == 0) {
      const std::int64_t slots = static_cast<std::int64_t>(num_sms) * occ_decode[d_idx];
      split_len = choose_split_len(lens, static_cast<std::int64_t>(n_kv_heads) * head_groups, slots,
                                   attn::kDecodeStageKeys, 256, 32);
    }
    const std::size_t first = decode.size();
    for (std::size_t i = 0; i < rows_.size(); ++i) {
      const auto [row, seq] = rows_[i];
      const std::int64_t len = lens[i];
      const int n_split = split_len > 0 ? static_cast<int>(ceil_div(len, split_len)) : 1;
      if (n_split <= 1) {
        decode.push_back({row, seq, 0, static_cast<std::int32_t>(len), -1, {0, 0, 0}});
        continue;
      }
      // Equal splits, multiples of a stage.
      const std::int64_t each =
          ceil_div(ceil_div(len, n_split), attn::kDecodeStageKeys) * attn::kDecodeStageKeys;
      const auto base = static_cast<std::int32_t>(n_partials);
      int k = 0;
      for (std::int64_t b = 0; b < len; b += each, ++k) {
        decode.push_back({row,
                          seq,
                          static_cast<std::int32_t>(b),
                          static_cast<std::int32_t>(std::min(len, b + each)),
                          base + k,
                          {0, 0, 0}});
      }
      n_partials += static_cast<std::size_t>(k);
      merge.push_back({row, base, k, 0});
      stats.decode_splits = std::max(stats.decode_splits, k);
    }
    std::stable_sort(decode.begin() + static_cast<std::ptrdiff_t>(first), decode.end(),
                     [](const DecodeItem& x, const DecodeItem& y) {
                       return x.kv_end - x.kv_begin > y.kv_end - y.kv_begin;
                     });
  }

  void upload(cudaStream_t stream) {
    constexpr std::size_t kP = sizeof(PrefillItem) / 4, kD = sizeof(DecodeItem) / 4,
                          kM = sizeof(MergeItem) / 4;
    off_decode = prefill.size() * kP;
    off_merge = off_decode + decode.size() * kD;
    const std::size_t total = off_merge + merge.size() * kM;
    if (total == 0) return;
    Staging& st = staging[next_staging];
    next_staging ^= 1;
    auto* host = static_cast<std::int32_t*>(st.acquire(total * sizeof(std::int32_t)));
    if (!prefill.empty()) std::memcpy(host, prefill.data(), prefill.size() * sizeof(PrefillItem));
    if (!decode.empty()) std::memcpy(host + off_decode, decode.data(), decode.size() * sizeof(DecodeItem));
    if (!merge.empty()) std::memcpy(host + off_merge, merge.data(), merge.size() * sizeof(MergeItem));
    const bool grow =
        total > work.size() ||
        n_partials * static_cast<std::size_t>(n_heads) * static_cast<std::size_t>(head_dim) > part_o.size();
    // Kernels of earlier steps may still read the buffers a growth frees (rare: buffers only grow).
    if (grow) check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize(attention plan)");
    work.reserve(total);
    check_cuda(
        cudaMemcpyAsync(work.get(), host, total * sizeof(std::int32_t), cudaMemcpyHostToDevice, stream),
        "cudaMemcpyAsync(attention work list)");
    check_cuda(cudaEventRecord(st.done, stream), "cudaEventRecord");
    st.pending = true;
    if (n_partials > 0) {
      part_o.reserve(n_partials * static_cast<std::size_t>(n_heads) * static_cast<std::size_t>(head_dim));
      part_lse.reserve(n_partials * static_cast<std::size_t>(n_heads));
    }
  }
};

PagedAttention::PagedAttention() : impl_(std::make_unique<Impl>()) {}
PagedAttention::~PagedAttention() = default;
PagedAttention::PagedAttention(PagedAttention&&) noexcept = default;
PagedAttention& PagedAttention::operator=(PagedAttention&&) noexcept = default;

void PagedAttention::set_options(const AttentionPlanOptions& options) {
  impl_->options = options;
}

void PagedAttention::plan(HostIndexSpan query_start, HostIndexSpan page_start, HostIndexSpan kv_len,
                          HostIndexSpan q_pos, int n_heads, int n_kv_heads, int head_dim, int block_size,
                          cudaStream_t stream, int sparse_tile) {
  Impl& m = *impl_;
  m.planned = false;
  m.n_heads = n_heads;
  m.n_kv_heads = n_kv_heads;
  m.head_dim = head_dim;
  m.block_size = block_size;
  m.sparse_tile = sparse_tile;
  m.validate(query_start, page_start, kv_len, q_pos);
  m.prepare_device();
  m.num_seqs = static_cast<int>(query_start.size - 1);
  m.rows = static_cast<int>(q_pos.size);
  m.head_groups = static_cast<int>(ceil_div(n_heads / n_kv_heads, attn::kDecodeHeadsPerCta));
  m.prefill.clear();
  m.decode.clear();
  m.merge.clear();
  m.n_partials = 0;
  m.stats = AttentionPlanStats{};
  m.plan_prefill(query_start, q_pos);
  m.plan_decode(query_start, q_pos);
  m.n_prefill = static_cast<int>(m.prefill.size());
  m.n_decode = static_cast<int>(m.decode.size());
  m.n_merge = static_cast<int>(m.merge.size());
  m.upload(stream);

  AttentionPlanStats& st = m.stats;
  st.prefill_items = m.n_prefill;
  st.prefill_tile_rows = m.n_prefill > 0 ? m.tile_rows : 0;
  st.prefill_wgmma = m.n_prefill > 0 && m.use_wgmma;
  st.decode_items = m.n_decode;
  st.merge_rows = m.n_merge;
  st.launches = (m.n_prefill > 0 ? 1 : 0) + (m.n_decode > 0 ? 1 : 0) + (m.n_merge > 0 ? 1 : 0);
  st.workspace_bytes = m.work.bytes() + m.part_o.bytes() + m.part_lse.bytes();
  m.planned = true;
}

template <class T>
void PagedAttention::run(const T* q, const BasicPagedKvView<T>& kv, const AttentionBatchView& batch,
                         const BlockSparseMaskView* mask, float scale, T* out, cudaStream_t stream) {
  const Impl& m = *impl_;
  if (!m.planned) invalid("run() before a successful plan()");
  if (kv.head_dim != m.head_dim || kv.n_kv_heads != m.n_kv_heads || kv.block_size != m.block_size)
    invalid("the cache (head_dim " + std::to_string(kv.head_dim) + ", n_kv_heads " +
            std::to_string(kv.n_kv_heads) + ", block_size " + std::to_string(kv.block_size) +
            ") is not the planned one (" + std::to_string(m.head_dim) + ", " + std::to_string(m.n_kv_heads) +
            ", " + std::to_string(m.block_size) + ")");
  if (batch.num_seqs != m.num_seqs || batch.rows != m.rows)
    invalid("the batch (" + std::to_string(batch.num_seqs) + " sequences, " + std::to_string(batch.rows) +
            " rows) is not the planned one (" + std::to_string(m.num_seqs) + ", " + std::to_string(m.rows) +
            ")");
  if (!(scale > 0.0f && std::isfinite(scale))) invalid("scale must be positive and finite");
  if (mask != nullptr) {
    if (m.sparse_tile == 0) invalid("a mask needs plan(..., sparse_tile)");
    if (mask->tile != m.sparse_tile)
      invalid("mask tile " + std::to_string(mask->tile) + " is not the planned sparse_tile " +
              std::to_string(m.sparse_tile));
    if (mask->seq_row_start == nullptr || mask->row_ptr == nullptr || mask->col_idx == nullptr)
      invalid("mask needs seq_row_start, row_ptr and col_idx");
    if ((mask->column_ptr == nullptr) != (mask->column_idx == nullptr))
      invalid("mask column_ptr and column_idx must be both set or both null");
  }
  if (m.rows == 0) return;
  if (q == nullptr || out == nullptr || kv.k == nullptr || kv.v == nullptr || batch.page_start == nullptr ||
      batch.pages == nullptr || batch.q_pos == nullptr)
    invalid("null q, out, cache or batch pointer");

  attn::KernelArgs<T> a{};
  a.q = q;
  a.k = kv.k;
  a.v = kv.v;
  a.out = out;
  a.page_start = batch.page_start;
  a.pages = batch.pages;
  a.q_pos = batch.q_pos;
  a.part_o = m.part_o.get();
  a.part_lse = m.part_lse.get();
  a.block_stride = static_cast<std::int64_t>(kv.block_size) * kv.n_kv_heads * kv.head_dim;
  a.row_stride = kv.n_kv_heads * kv.head_dim;
  a.n_heads = m.n_heads;
  a.group = m.n_heads / m.n_kv_heads;
  a.block_size = kv.block_size;
  a.bs_shift = -1;
  if ((kv.block_size & (kv.block_size - 1)) == 0) {
    a.bs_shift = 0;
    while ((1 << a.bs_shift) < kv.block_size) ++a.bs_shift;
  }
  a.scale_log2 = scale * 1.4426950408889634f;
  if (mask != nullptr) {
    a.mask_tile = mask->tile;
    a.seq_row_start = mask->seq_row_start;
    a.row_ptr = mask->row_ptr;
    a.col_idx = mask->col_idx;
    a.column_ptr = mask->column_ptr;
    a.column_idx = mask->column_idx;
  }

  const std::int32_t* work = m.work.get();
  const auto* prefill_items = reinterpret_cast<const PrefillItem*>(work);
  if (m.n_prefill > 0 && m.use_wgmma)
    attn::launch_prefill_wgmma(a, prefill_items, m.n_prefill, m.head_dim, stream);
  else if (m.n_prefill > 0)
    attn::launch_prefill(a, prefill_items, m.n_prefill, m.head_dim, m.tile_rows, stream);
  if (m.n_decode > 0)
    attn::launch_decode(a, reinterpret_cast<const DecodeItem*>(work + m.off_decode), m.n_decode, m.n_kv_heads,
                        m.head_groups, m.head_dim, stream);
  if (m.n_merge > 0)
    attn::launch_merge(a, reinterpret_cast<const MergeItem*>(work + m.off_merge), m.n_merge, m.head_dim,
                       stream);
}
template void PagedAttention::run(const bf16*, const BasicPagedKvView<bf16>&, const AttentionBatchView&,
                                  const BlockSparseMaskView*, float, bf16*, cudaStream_t);
template void PagedAttention::run(const f16*, const BasicPagedKvView<f16>&, const AttentionBatchView&,
                                  const BlockSparseMaskView*, float, f16*, cudaStream_t);

const AttentionPlanStats& PagedAttention::stats() const {
  return impl_->stats;
}

}  // namespace chunkwise::cuda
