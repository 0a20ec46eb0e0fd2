// Llama-family decoder forward on the CPU (fp32), the reference every other backend is
// checked against. Rows of the batch meet only inside attention, where each sequence sees only
// its own pages.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"

namespace chunkwise {

namespace {
void ensure(std::vector<float>& buf, std::int64_t n) {
  if (static_cast<std::int64_t>(buf.size()) < n) buf.resize(static_cast<std::size_t>(n));
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

void CpuBackend::forward(const ForwardBatch& b, std::span<float> logits) {
  validate(b, logits.size(), model_->config().vocab, num_blocks_, block_size_);
  const ModelConfig& c = model_->config();
  const ModelWeights& w = model_->weights();
  const std::int64_t T = b.rows();
  if (T == 0) return;
  const std::int64_t H = c.hidden, Q = c.q_dim(), KV = c.kv_dim(), F = c.ffn;
  ensure(x_, T * H), ensure(h_, T * H), ensure(q_, T * Q), ensure(k_, T * KV), ensure(v_, T * KV);
  ensure(attn_, T * Q), ensure(o_, T * H), ensure(gate_, T * F), ensure(up_, T * F);

  cpu::embed(w.token_embedding.data.data(), w.token_embedding.rows, H, b.tokens.data(), T, x_.data());
  const cpu::AttentionBatch ab{b.query_start, b.page_start, b.pages, b.kv_len, b.positions};
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));

  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    cpu::rms_norm(x_.data(), L.attn_norm.data(), T, H, c.rms_eps, h_.data());
    cpu::matmul_nt(h_.data(), T, H, L.wq.data.data(), Q, q_.data());
    cpu::matmul_nt(h_.data(), T, H, L.wk.data.data(), KV, k_.data());
    cpu::matmul_nt(h_.data(), T, H, L.wv.data.data(), KV, v_.data());
    cpu::rope(q_.data(), T, c.n_heads, c.head_dim, b.positions.data(), inv_freq_);
    cpu::rope(k_.data(), T, c.n_kv_heads, c.head_dim, b.positions.data(), inv_freq_);
    const cpu::PagedKv cache{k_cache_[static_cast<std::size_t>(l)].data(),
                             v_cache_[static_cast<std::size_t>(l)].data(), block_size_, c.n_kv_heads,
                             c.head_dim};
    cpu::write_kv(cache, k_.data(), v_.data(), b.slots.data(), T);
    cpu::paged_attention(q_.data(), cache, ab, c.n_heads, scale, attn_.data());
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
  const auto n_out = static_cast<std::int64_t>(b.logit_rows.size());
  if (n_out == 0) return;
  ensure(o_, n_out * H), ensure(h_, n_out * H);
  for (std::int64_t i = 0; i < n_out; ++i) {
    const float* src = x_.data() + static_cast<std::int64_t>(b.logit_rows[static_cast<std::size_t>(i)]) * H;
    std::copy(src, src + H, o_.data() + i * H);
  }
  cpu::rms_norm(o_.data(), w.output_norm.data(), n_out, H, c.rms_eps, h_.data());
  const Matrix& head = w.lm_head();
  cpu::matmul_nt(h_.data(), n_out, H, head.data.data(), head.rows, logits.data());
}

}  // namespace chunkwise
