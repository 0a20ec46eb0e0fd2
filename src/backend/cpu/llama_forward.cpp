// Llama-family decoder forward on the CPU (fp32), the reference every other backend is
// checked against. Rows of the batch meet only inside attention, where each sequence sees only
// its own pages. A selective recompute (chunk reuse) narrows the rows at its check layer, after
// the KV write.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "chunkwise/backend/chunk_kv.hpp"
#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/core/error.hpp"

namespace chunkwise {

namespace {
void ensure(std::vector<float>& buf, std::int64_t n) {
  if (static_cast<std::int64_t>(buf.size()) < n) buf.resize(static_cast<std::size_t>(n));
}

// Whether sequence s is probed by the batch's sparse selector: more than one query row and at least
// min_kv_len keys. Such a sequence's rows must be one chunk: consecutive positions ending at kv_len - 1.
bool probed(const ForwardBatch& b, std::size_t s, int min_kv_len) {
  const std::int32_t n = b.query_start[s + 1] - b.query_start[s];
  return n > 1 && b.kv_len[s] >= min_kv_len;
}

void check_sparse_chunks(const ForwardBatch& b) {
  const int min_kv_len = b.sparse->min_kv_len();
  for (std::size_t s = 0; s < b.kv_len.size(); ++s) {
    if (!probed(b, s, min_kv_len)) continue;
    const std::int32_t r0 = b.query_start[s], n = b.query_start[s + 1] - r0;
    for (std::int32_t i = 0; i < n; ++i) {
      if (b.positions[static_cast<std::size_t>(r0 + i)] != b.kv_len[s] - n + i) {
        throw Error(ErrorCode::kInvalidArgument,
                    "sparse attention: the rows of sequence " + std::to_string(s) +
                        " are not one chunk at consecutive positions ending at kv_len - 1 = " +
                        std::to_string(b.kv_len[s] - 1));
      }
    }
  }
}

// Dense paged attention for the sequences [s0, s1) of the batch alone (their rows are contiguous).
void dense_run(const ForwardBatch& b, std::size_t s0, std::size_t s1, const cpu::PagedKv& cache, int n_heads,
               float scale, std::int64_t row_floats, const float* q, float* out) {
  if (s1 <= s0) return;
  const std::int32_t q0 = b.query_start[s0], p0 = b.page_start[s0];
  std::vector<std::int32_t> query_start, page_start;
  for (std::size_t s = s0; s <= s1; ++s) {
    query_start.push_back(b.query_start[s] - q0);
    page_start.push_back(b.page_start[s] - p0);
  }
  const auto rows = static_cast<std::size_t>(query_start.back());
  const cpu::AttentionBatch ab{
      query_start, page_start,
      std::span(b.pages).subspan(static_cast<std::size_t>(p0), static_cast<std::size_t>(page_start.back())),
      std::span(b.kv_len).subspan(s0, s1 - s0),
      std::span(b.positions).subspan(static_cast<std::size_t>(q0), rows)};
  cpu::paged_attention(q + q0 * row_floats, cache, ab, n_heads, scale, out + q0 * row_floats);
}

// d_j = sum over dims of (K_new[j] - K_old[j])^2 for every chunk row j of a selective batch that still
// runs: K_new the layer's fresh post-RoPE keys k_new [running rows, kv_dim] (running: the batch rows
// `running`, ascending, in that order), K_old the loaded key still at the row's slot in k_cache. Always
// rows have no loaded key and get 0; chunk rows an earlier stage dropped get -inf.
std::vector<float> key_deviation(const SelectiveRecompute& r, std::span<const std::int32_t> running,
                                 const float* k_new, const float* k_cache,
                                 std::span<const std::int64_t> slots, std::int64_t kv_dim,
                                 std::int64_t batch_rows) {
  std::vector<float> d(static_cast<std::size_t>(batch_rows), 0.0f);
  for (const auto& c : r.chunks)
    std::fill(d.begin() + c.begin, d.begin() + c.end, -std::numeric_limits<float>::infinity());
  for (std::size_t i = 0; i < running.size(); ++i) {
    float& out = d[static_cast<std::size_t>(running[i])];
    if (out == 0.0f) continue;  // an always row
    const float* fresh = k_new + static_cast<std::int64_t>(i) * kv_dim;
    const float* loaded = k_cache + slots[i] * kv_dim;
    double sum = 0.0;
    for (std::int64_t e = 0; e < kv_dim; ++e) {
      const double diff = static_cast<double>(fresh[e]) - loaded[e];
      sum += diff * diff;
    }
    out = static_cast<float>(sum);
  }
  return d;
}

// The metadata of the rows a selective recompute carries past its check layer.
struct NarrowedRows {
  std::vector<std::int32_t> positions;
  std::vector<std::int64_t> slots;
  std::vector<std::int32_t> query_start;
  std::vector<std::int32_t> logit_rows;  // the batch's logit rows, renumbered among the kept rows
};

// An activation array of rows `dim` floats wide.
struct RowArray {
  float* data;
  std::int64_t dim;
};

// Keeps the batch rows `keep` (ascending, a subset of `running`: the batch rows each array
// [running rows, dim] holds, in order) of the arrays in place, moved to the front, and returns their
// metadata.
NarrowedRows narrow_rows(const ForwardBatch& b, std::span<const std::int32_t> keep,
                         std::span<const std::int32_t> running, std::initializer_list<RowArray> arrays) {
  NarrowedRows n;
  for (std::size_t i = 0; i < keep.size(); ++i) {
    const auto row = static_cast<std::size_t>(keep[i]);
    const auto from =
        static_cast<std::size_t>(std::lower_bound(running.begin(), running.end(), keep[i]) - running.begin());
    // from >= i, so the source row is never one already overwritten.
    if (from != i)
      for (const RowArray& a : arrays)
        std::copy_n(a.data + static_cast<std::int64_t>(from) * a.dim, a.dim,
                    a.data + static_cast<std::int64_t>(i) * a.dim);
    n.positions.push_back(b.positions[row]);
    n.slots.push_back(b.slots[row]);
  }
  n.query_start = {0, static_cast<std::int32_t>(keep.size())};
  // validate() made every logit row an always row, and always rows are all kept.
  for (const auto r : b.logit_rows)
    n.logit_rows.push_back(
        static_cast<std::int32_t>(std::lower_bound(keep.begin(), keep.end(), r) - keep.begin()));
  return n;
}
}  // namespace

std::size_t CpuBackend::kv_bytes_per_block(const ModelConfig& c, int block_size) {
  return static_cast<std::size_t>(2) * c.n_layers * block_size * c.kv_dim() * sizeof(float);
}

CpuBackend::CpuBackend(std::shared_ptr<const Model> model, int num_blocks, int block_size)
    : model_(std::move(model)), num_blocks_(num_blocks), block_size_(block_size) {
  check(model_ != nullptr, ErrorCode::kInvalidArgument, "CpuBackend needs a model");
  check(num_blocks > 0, ErrorCode::kInvalidArgument, "KV cache needs at least one block");
  check(block_size > 0 && block_size <= 1024, ErrorCode::kInvalidArgument,
        "KV block size must be in [1, 1024], got " + std::to_string(block_size));
  const ModelConfig& c = model_->config();
  inv_freq_ = cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling);
  const auto per_layer = static_cast<std::size_t>(num_blocks) * block_size * c.kv_dim();
  k_cache_.assign(c.n_layers, std::vector<float>(per_layer));
  v_cache_.assign(c.n_layers, std::vector<float>(per_layer));
}

std::size_t CpuBackend::block_floats() const {
  return static_cast<std::size_t>(block_size_) * static_cast<std::size_t>(model_->config().kv_dim());
}

void CpuBackend::check_block(BlockId b) const {
  check(b >= 0 && b < num_blocks_, ErrorCode::kInvalidArgument,
        "KV block " + std::to_string(b) + " out of range");
}

void CpuBackend::copy_block(BlockId src, BlockId dst) {
  check_block(src);
  check_block(dst);
  const std::size_t n = block_floats();
  for (auto* cache : {&k_cache_, &v_cache_})
    for (auto& layer : *cache)
      std::copy_n(layer.data() + static_cast<std::size_t>(src) * n, n,
                  layer.data() + static_cast<std::size_t>(dst) * n);
}

void CpuBackend::save_block(BlockId src, std::span<std::byte> dst) const {
  check_block(src);
  check(dst.size() == kv_bytes_per_block(model_->config(), block_size_), ErrorCode::kInvalidArgument,
        "KV block save: wrong buffer size");
  const std::size_t n = block_floats();
  std::byte* out = dst.data();
  for (const auto* cache : {&k_cache_, &v_cache_})
    for (const auto& layer : *cache) {
      std::memcpy(out, layer.data() + static_cast<std::size_t>(src) * n, n * sizeof(float));
      out += n * sizeof(float);
    }
}

void CpuBackend::load_block(BlockId dst, std::span<const std::byte> src) {
  check_block(dst);
  check(src.size() == kv_bytes_per_block(model_->config(), block_size_), ErrorCode::kInvalidArgument,
        "KV block load: wrong buffer size");
  const std::size_t n = block_floats();
  const std::byte* in = src.data();
  for (auto* cache : {&k_cache_, &v_cache_})
    for (auto& layer : *cache) {
      std::memcpy(layer.data() + static_cast<std::size_t>(dst) * n, in, n * sizeof(float));
      in += n * sizeof(float);
    }
}

void CpuBackend::write_chunk_kv(const ChunkKv& kv, std::int32_t position,
                                std::span<const std::int64_t> slots) {
  const ModelConfig& c = model_->config();
  check_chunk_placement(kv, c, position, slots, num_blocks_, block_size_);
  const auto kv_dim = static_cast<std::size_t>(c.kv_dim());
  const auto n = static_cast<std::size_t>(kv.n_tokens);
  std::vector<float> k(n * kv_dim);  // one layer's keys, rotated to their new positions
  for (int l = 0; l < c.n_layers; ++l) {
    const auto stored_k = kv.k(l);
    const auto stored_v = kv.v(l);
    std::copy(stored_k.begin(), stored_k.end(), k.begin());
    rotate_keys(k, c.n_kv_heads, c.head_dim, position - kv.position0, inv_freq_);
    // The cache is [num_blocks, block_size, kv_dim] per layer: slot s starts at s * kv_dim.
    float* k_layer = k_cache_[static_cast<std::size_t>(l)].data();
    float* v_layer = v_cache_[static_cast<std::size_t>(l)].data();
    for (std::size_t i = 0; i < n; ++i) {
      const auto dst = static_cast<std::size_t>(slots[i]) * kv_dim;
      std::copy_n(k.data() + i * kv_dim, kv_dim, k_layer + dst);
      std::copy_n(stored_v.data() + i * kv_dim, kv_dim, v_layer + dst);
    }
  }
}

ChunkKv CpuBackend::read_chunk_kv(std::span<const TokenId> tokens, std::int32_t position0,
                                  std::span<const std::int64_t> slots) const {
  const ModelConfig& c = model_->config();
  ChunkKv kv = ChunkKv::zeros(tokens, c.n_layers, c.kv_dim(), position0);
  check_chunk_placement(kv, c, position0, slots, num_blocks_, block_size_);
  const auto kv_dim = static_cast<std::size_t>(c.kv_dim());
  for (int l = 0; l < c.n_layers; ++l) {
    const float* k_layer = k_cache_[static_cast<std::size_t>(l)].data();
    const float* v_layer = v_cache_[static_cast<std::size_t>(l)].data();
    const auto k = kv.k(l);
    const auto v = kv.v(l);
    for (std::size_t i = 0; i < slots.size(); ++i) {
      const auto src = static_cast<std::size_t>(slots[i]) * kv_dim;
      std::copy_n(k_layer + src, kv_dim, k.data() + i * kv_dim);
      std::copy_n(v_layer + src, kv_dim, v.data() + i * kv_dim);
    }
  }
  return kv;
}

void CpuBackend::sparse_layer_attention(const ForwardBatch& b, int layer, const cpu::PagedKv& cache,
                                        float scale) {
  const ModelConfig& c = model_->config();
  const std::int64_t Q = c.q_dim(), KV = c.kv_dim();
  const int min_kv_len = b.sparse->min_kv_len();
  const std::size_t n_seq = b.kv_len.size();
  std::size_t run_begin = 0;  // first sequence of the current run of dense ones
  for (std::size_t s = 0; s < n_seq; ++s) {
    if (!probed(b, s, min_kv_len)) continue;
    const std::int32_t r0 = b.query_start[s], n = b.query_start[s + 1] - r0, kv_len = b.kv_len[s];
    const auto pages =
        std::span(b.pages).subspan(static_cast<std::size_t>(b.page_start[s]),
                                   static_cast<std::size_t>(b.page_start[s + 1] - b.page_start[s]));
    // The chunk's keys, contiguous: whole blocks at a time.
    ensure(probe_k_, static_cast<std::int64_t>(kv_len) * KV);
    for (std::int32_t p = 0; p < kv_len; p += block_size_) {
      const std::int64_t len = std::min(block_size_, kv_len - p);
      const float* src =
          cache.k +
          static_cast<std::int64_t>(pages[static_cast<std::size_t>(p / block_size_)]) * cache.block_stride();
      std::copy(src, src + len * KV, probe_k_.data() + static_cast<std::int64_t>(p) * KV);
    }
    AttentionProbe probe;
    probe.layer = layer;
    probe.n_layers = c.n_layers;
    probe.n_heads = c.n_heads;
    probe.n_kv_heads = c.n_kv_heads;
    probe.head_dim = c.head_dim;
    probe.query_begin = kv_len - n;
    probe.query_len = n;
    probe.kv_len = kv_len;
    probe.scale = scale;
    probe.q = q_.data() + r0 * Q;
    probe.k = probe_k_.data();
    const BlockMask mask = b.sparse->select(probe);
    if (mask.dense) continue;  // stays in the dense run
    dense_run(b, run_begin, s, cache, c.n_heads, scale, Q, q_.data(), attn_.data());
    cpu::sparse_attention(q_.data() + r0 * Q, cache, pages, kv_len - n, n, mask, c.n_heads, scale,
                          attn_.data() + r0 * Q);
    run_begin = s + 1;
  }
  dense_run(b, run_begin, n_seq, cache, c.n_heads, scale, Q, q_.data(), attn_.data());
}

void CpuBackend::forward(const ForwardBatch& b, std::span<float> logits) {
  validate(b, logits.size(), model_->config().vocab, num_blocks_, block_size_);
  const ModelConfig& c = model_->config();
  const ModelWeights& w = model_->weights();
  const SelectiveRecompute* recompute = b.recompute;
  if (recompute != nullptr) {
    check(recompute->last_check_layer() < c.n_layers, ErrorCode::kInvalidArgument,
          "forward batch: selective recompute: check_layer " + std::to_string(recompute->check_layer) +
              " and " + std::to_string(recompute->gradual.size()) +
              " gradual stages must end below the model's " + std::to_string(c.n_layers) + " layers");
  }
  std::int64_t T = b.rows();
  if (T == 0) return;
  const std::int64_t H = c.hidden, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn;
  ensure(x_, T * H), ensure(h_, T * H), ensure(q_, T * Q), ensure(k_, T * KV), ensure(v_, T * KV);
  ensure(attn_, T * Q), ensure(o_, T * H), ensure(gate_, T * F), ensure(up_, T * F);

  if (b.sparse != nullptr) check_sparse_chunks(b);

  cpu::embed(w.token_embedding.data.data(), w.token_embedding.rows, H, b.tokens.data(), T, x_.data());
  // The rows that run through the layers: the whole batch, until a selective recompute's check
  // layer narrows them to the rows it selects (then these views point into `narrowed`).
  std::span<const std::int32_t> positions = b.positions;
  std::span<const std::int64_t> slots = b.slots;
  std::span<const std::int32_t> logit_rows = b.logit_rows;
  cpu::AttentionBatch ab{b.query_start, b.page_start, b.pages, b.kv_len, b.positions};
  NarrowedRows narrowed;
  // A selective recompute's running rows: every batch row until a selection narrows them.
  std::vector<std::int32_t> running;
  if (recompute != nullptr) {
    running.resize(static_cast<std::size_t>(T));
    std::iota(running.begin(), running.end(), 0);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    cpu::rms_norm(x_.data(), L.attn_norm.data(), T, H, c.rms_eps, h_.data());
    cpu::matmul_nt(h_.data(), T, H, L.wq.data.data(), Q, q_.data());
    cpu::matmul_nt(h_.data(), T, H, L.wk.data.data(), KV, k_.data());
    cpu::matmul_nt(h_.data(), T, H, L.wv.data.data(), KV, v_.data());
    cpu::rope(q_.data(), T, c.n_heads, c.head_dim, positions.data(), inv_freq_);
    cpu::rope(k_.data(), T, c.n_kv_heads, c.head_dim, positions.data(), inv_freq_);
    const cpu::PagedKv cache{k_cache_[static_cast<std::size_t>(l)].data(),
                             v_cache_[static_cast<std::size_t>(l)].data(), block_size_, c.n_kv_heads,
                             c.head_dim};
    // At a check layer the loaded keys are still in the cache: measure, then overwrite them.
    const bool check_layer =
        recompute != nullptr && l >= recompute->check_layer && l <= recompute->last_check_layer();
    std::vector<std::int32_t> keep;
    if (check_layer) {
      const auto stage = static_cast<std::size_t>(l - recompute->check_layer);
      std::vector<float> deviation =
          key_deviation(*recompute, running, k_.data(), cache.k, slots, KV, b.rows());
      keep = select_recompute_rows(*recompute, deviation, stage);
      if (recompute->report != nullptr) {
        if (stage == 0)
          fill_recompute_report(*recompute, std::move(deviation), keep);
        else
          recompute->report->rows = keep;
      }
    }
    cpu::write_kv(cache, k_.data(), v_.data(), slots.data(), T);
    // Every row's fresh KV of this layer is written; past it only the kept rows matter, so they
    // narrow before attention (the others' outputs of this layer would be thrown away). Keeping every
    // row (all ratios 1) changes nothing: the same ops on the same rows as a full prefill.
    if (check_layer && static_cast<std::int64_t>(keep.size()) < T) {
      narrowed = narrow_rows(b, keep, running, {{x_.data(), H}, {q_.data(), Q}});
      running = std::move(keep);
      T = static_cast<std::int64_t>(running.size());
      positions = narrowed.positions;
      slots = narrowed.slots;
      logit_rows = narrowed.logit_rows;
      ab = {narrowed.query_start, b.page_start, b.pages, b.kv_len, narrowed.positions};
    }
    if (b.sparse == nullptr) {
      cpu::paged_attention(q_.data(), cache, ab, c.n_heads, scale, attn_.data());
    } else {
      sparse_layer_attention(b, l, cache, scale);
    }
    cpu::matmul_nt(attn_.data(), T, Q, L.wo.data.data(), H, o_.data());
    for (std::int64_t i = 0; i < T * H; ++i) x_[i] += o_[i];

    cpu::rms_norm(x_.data(), L.ffn_norm.data(), T, H, c.rms_eps, h_.data());
    cpu::matmul_nt(h_.data(), T, H, L.w_gate.data.data(), F, gate_.data());
    cpu::matmul_nt(h_.data(), T, H, L.w_up.data.data(), F, up_.data());
    cpu::swiglu(gate_.data(), up_.data(), T * F, gate_.data());
    cpu::matmul_nt(gate_.data(), T, F, L.w_down.data.data(), H, o_.data());
    for (std::int64_t i = 0; i < T * H; ++i) x_[i] += o_[i];
  }

  // Only the rows whose next token is wanted go through the final norm and the LM head.
  const auto n_out = static_cast<std::int64_t>(logit_rows.size());
  if (n_out == 0) return;
  ensure(o_, n_out * H), ensure(h_, n_out * H);
  for (std::int64_t i = 0; i < n_out; ++i) {
    const float* src = x_.data() + static_cast<std::int64_t>(logit_rows[static_cast<std::size_t>(i)]) * H;
    std::copy(src, src + H, o_.data() + i * H);
  }
  cpu::rms_norm(o_.data(), w.output_norm.data(), n_out, H, c.rms_eps, h_.data());
  const Matrix& head = w.lm_head();
  cpu::matmul_nt(h_.data(), n_out, H, head.data.data(), head.rows, logits.data());
}

}  // namespace chunkwise
