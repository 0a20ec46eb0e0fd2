// The Llama forward on the GPU. One step: upload the batch metadata in one copy, embed, then per
// layer RMSNorm → fused QKV GEMM → RoPE + KV write → paged attention → O GEMM accumulated into
// the residual → RMSNorm → fused gate/up GEMM → SwiGLU → down GEMM accumulated into the residual;
// finally the norm and LM head on the rows whose logits are wanted, copied to the host.
#include "chunkwise/cuda/cuda_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/attention.hpp"
#include "chunkwise/cuda/common.hpp"
#include "chunkwise/cuda/gemm.hpp"
#include "chunkwise/cuda/ops.hpp"

namespace chunkwise::cuda {

namespace {

std::vector<bf16> to_bf16(const float* src, std::size_t n) {
  std::vector<bf16> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = __float2bfloat16(src[i]);
  return out;
}

// Uploads rows of fp32 host matrices, concatenated, as one bf16 device matrix.
DeviceBuffer<bf16> upload(std::initializer_list<std::pair<const float*, std::size_t>> parts) {
  std::size_t n = 0;
  for (const auto& p : parts) n += p.second;
  std::vector<bf16> host;
  host.reserve(n);
  for (const auto& p : parts) {
    const std::vector<bf16> b = to_bf16(p.first, p.second);
    host.insert(host.end(), b.begin(), b.end());
  }
  DeviceBuffer<bf16> d(n);
  check_cuda(cudaMemcpy(d.get(), host.data(), n * sizeof(bf16), cudaMemcpyHostToDevice), "upload weights");
  return d;
}

DeviceBuffer<bf16> upload(const std::vector<float>& v) { return upload({{v.data(), v.size()}}); }
DeviceBuffer<bf16> upload(const Matrix& m) { return upload({{m.data.data(), m.data.size()}}); }

struct Layer {
  DeviceBuffer<bf16> attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down;
};

// Pinned host memory for the per-step metadata upload.
class PinnedBytes {
 public:
  PinnedBytes() = default;
  ~PinnedBytes() {
    if (p_) cudaFreeHost(p_);
  }
  PinnedBytes(const PinnedBytes&) = delete;
  PinnedBytes& operator=(const PinnedBytes&) = delete;
  std::byte* reserve(std::size_t n) {
    if (n > n_) {
      if (p_) cudaFreeHost(p_);
      p_ = nullptr;
      check_cuda(cudaMallocHost(reinterpret_cast<void**>(&p_), n), "cudaMallocHost");
      n_ = n;
    }
    return p_;
  }

 private:
  std::byte* p_ = nullptr;
  std::size_t n_ = 0;
};

// Lays arrays out back to back (each 16-byte aligned) in one staging buffer and one device buffer.
class MetadataPack {
 public:
  template <class T>
  std::size_t add(const std::vector<T>& v) {
    return add(std::as_bytes(std::span<const T>(v)));
  }
  std::size_t add(std::span<const std::byte> bytes) {
    const std::size_t off = (size_ + 15) / 16 * 16;
    parts_.push_back({off, bytes.data(), bytes.size()});
    size_ = off + bytes.size();
    return off;
  }
  // Copies everything into staging and issues one host-to-device copy.
  void upload(PinnedBytes& staging, DeviceBuffer<std::byte>& device, cudaStream_t stream) {
    std::byte* host = staging.reserve(std::max<std::size_t>(size_, 16));
    for (const Part& p : parts_)
      if (p.bytes) std::memcpy(host + p.offset, p.data, p.bytes);
    device.reserve(std::max<std::size_t>(size_, 16));
    check_cuda(cudaMemcpyAsync(device.get(), host, size_, cudaMemcpyHostToDevice, stream), "upload batch");
  }

 private:
  struct Part {
    std::size_t offset;
    const void* data;
    std::size_t bytes;
  };
  std::vector<Part> parts_;
  std::size_t size_ = 0;
};

}  // namespace

struct CudaBackend::Impl {
  std::shared_ptr<const Model> model;
  int num_blocks;
  int block_size;
  int device;
  cudaStream_t stream = nullptr;
  Gemm gemm;

  DeviceBuffer<bf16> embedding, output_norm, lm_head_own;
  const bf16* lm_head = nullptr;
  std::vector<Layer> layers;
  DeviceBuffer<float> inv_freq;
  DeviceBuffer<bf16> kv;  // [layers][K|V][num_blocks * block_size * kv_dim]
  std::size_t kv_layer_elems = 0;

  PagedAttention attention;
  PinnedBytes staging;
  DeviceBuffer<std::byte> metadata;
  DeviceBuffer<int> bad_token;
  // Activations, grown to the largest batch seen.
  DeviceBuffer<float> x, qkv, gate_up, logits;
  DeviceBuffer<bf16> h, q, attn, act, h_out;
  DeviceBuffer<std::int32_t> tokens;
  DeviceBuffer<std::byte> sample_ws;

  Impl(std::shared_ptr<const Model> m, int nb, int bs, int dev)
      : model(std::move(m)), num_blocks(nb), block_size(bs), device(dev) {}

  ~Impl() {
    if (stream) cudaStreamDestroy(stream);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  std::vector<std::size_t> run(const ForwardBatch& b, std::size_t logits_size,
                               const std::vector<std::span<const std::byte>>& extra);

  bf16* k_cache(int l) { return kv.get() + (2 * static_cast<std::size_t>(l)) * kv_layer_elems; }
  bf16* v_cache(int l) { return kv.get() + (2 * static_cast<std::size_t>(l) + 1) * kv_layer_elems; }
  [[nodiscard]] std::size_t block_elems() const {
    return static_cast<std::size_t>(block_size) * static_cast<std::size_t>(model->config().kv_dim());
  }
};

namespace {
void select_device(int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  check(device >= 0 && device < n, ErrorCode::kBackend,
        "CUDA device " + std::to_string(device) + " not present (" + std::to_string(n) + " visible)");
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
}
}  // namespace

CudaBackend::CudaBackend(std::shared_ptr<const Model> model, int num_blocks, int block_size, int device) {
  check(model != nullptr, ErrorCode::kInvalidArgument, "CudaBackend needs a model");
  check(num_blocks > 0, ErrorCode::kInvalidArgument, "KV cache needs at least one block");
  check(block_size >= 1 && block_size <= 128, ErrorCode::kInvalidArgument,
        "CUDA backend: KV block size must be in [1, 128], got " + std::to_string(block_size));
  const ModelConfig& c = model->config();
  check(c.head_dim == 64 || c.head_dim == 128, ErrorCode::kUnsupported,
        "CUDA backend: head_dim " + std::to_string(c.head_dim) + " (64 and 128 are supported)");
  select_device(device);
  impl_ = std::make_unique<Impl>(std::move(model), num_blocks, block_size, device);
  Impl& m = *impl_;
  check_cuda(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "cudaStreamCreate");

  const ModelWeights& w = m.model->weights();
  m.embedding = upload(w.token_embedding);
  m.output_norm = upload(w.output_norm);
  if (!w.output.empty()) m.lm_head_own = upload(w.output);
  m.lm_head = w.output.empty() ? m.embedding.get() : m.lm_head_own.get();
  for (const LayerWeights& L : w.layers) {
    Layer d;
    d.attn_norm = upload(L.attn_norm);
    d.wqkv = upload({{L.wq.data.data(), L.wq.data.size()},
                     {L.wk.data.data(), L.wk.data.size()},
                     {L.wv.data.data(), L.wv.data.size()}});
    d.wo = upload(L.wo);
    d.ffn_norm = upload(L.ffn_norm);
    d.w_gate_up = upload({{L.w_gate.data.data(), L.w_gate.data.size()}, {L.w_up.data.data(), L.w_up.data.size()}});
    d.w_down = upload(L.w_down);
    m.layers.push_back(std::move(d));
  }
  const std::vector<float> inv_freq = cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling);
  m.inv_freq = DeviceBuffer<float>(inv_freq.size());
  check_cuda(cudaMemcpy(m.inv_freq.get(), inv_freq.data(), inv_freq.size() * sizeof(float), cudaMemcpyHostToDevice),
             "upload inv_freq");
  m.kv_layer_elems = static_cast<std::size_t>(num_blocks) * m.block_elems();
  m.kv = DeviceBuffer<bf16>(2 * static_cast<std::size_t>(c.n_layers) * m.kv_layer_elems);
  // Fresh blocks hold zeros, not garbage: a bug that reads unwritten KV then shows as a wrong
  // answer in the tests rather than as NaN by chance.
  check_cuda(cudaMemset(m.kv.get(), 0, m.kv.bytes()), "clear KV cache");
  m.bad_token = DeviceBuffer<int>(1);
}

CudaBackend::~CudaBackend() = default;
CudaBackend::CudaBackend(CudaBackend&&) noexcept = default;
CudaBackend& CudaBackend::operator=(CudaBackend&&) noexcept = default;

int CudaBackend::num_blocks() const { return impl_->num_blocks; }
int CudaBackend::block_size() const { return impl_->block_size; }
int CudaBackend::device() const { return impl_->device; }

std::size_t CudaBackend::kv_bytes_per_block(const ModelConfig& c, int block_size) {
  return static_cast<std::size_t>(2) * c.n_layers * block_size * c.kv_dim() * sizeof(bf16);
}

// Runs the model on b up to the logits of the wanted rows, left in m.logits on the device;
// `extra` arrays ride along in the batch's one metadata upload (their device offsets come back).
std::vector<std::size_t> CudaBackend::Impl::run(const ForwardBatch& b, std::size_t logits_size,
                                                const std::vector<std::span<const std::byte>>& extra) {
  const ModelConfig& c = model->config();
  validate(b, logits_size, c.vocab, num_blocks, block_size);
  for (const TokenId t : b.tokens)
    check(t >= 0 && t < c.vocab, ErrorCode::kTokenOutOfRange,
          "token id " + std::to_string(t) + " outside the vocabulary [0, " + std::to_string(c.vocab) + ")");
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  const std::int64_t T = b.rows();
  const cudaStream_t st = stream;
  const std::int64_t H = c.hidden, Q = c.q_dim(), F = c.ffn;
  const std::int64_t QKV = Q + 2 * static_cast<std::int64_t>(c.kv_dim());
  const auto n_out = static_cast<std::int64_t>(b.logit_rows.size());
  const auto rows = static_cast<std::size_t>(std::max<std::int64_t>(T, 1));
  x.reserve(rows * H), qkv.reserve(rows * QKV), gate_up.reserve(rows * 2 * F);
  h.reserve(rows * H), q.reserve(rows * Q), attn.reserve(rows * Q), act.reserve(rows * F);
  h_out.reserve(static_cast<std::size_t>(std::max<std::int64_t>(n_out, 1)) * H);
  logits.reserve(static_cast<std::size_t>(std::max<std::int64_t>(n_out, 1)) * c.vocab);

  MetadataPack pack;
  const std::size_t o_tokens = pack.add(b.tokens), o_pos = pack.add(b.positions), o_slots = pack.add(b.slots),
                    o_qs = pack.add(b.query_start), o_ps = pack.add(b.page_start), o_pages = pack.add(b.pages),
                    o_kvlen = pack.add(b.kv_len), o_logit_rows = pack.add(b.logit_rows);
  std::vector<std::size_t> extra_offsets;
  for (const auto& e : extra) extra_offsets.push_back(pack.add(e));
  pack.upload(staging, metadata, st);
  if (T == 0) return extra_offsets;
  auto dev = [&](std::size_t off) { return metadata.get() + off; };
  const auto* d_tokens = reinterpret_cast<const std::int32_t*>(dev(o_tokens));
  const auto* d_pos = reinterpret_cast<const std::int32_t*>(dev(o_pos));
  const auto* d_slots = reinterpret_cast<const std::int64_t*>(dev(o_slots));
  const AttentionBatchView ab{reinterpret_cast<const std::int32_t*>(dev(o_qs)),
                              reinterpret_cast<const std::int32_t*>(dev(o_ps)),
                              reinterpret_cast<const std::int32_t*>(dev(o_pages)),
                              reinterpret_cast<const std::int32_t*>(dev(o_kvlen)),
                              d_pos,
                              static_cast<int>(b.num_seqs()),
                              static_cast<int>(T)};
  attention.plan(b.query_start, b.page_start, b.kv_len, b.positions, c.n_heads, c.n_kv_heads, c.head_dim,
                 block_size, st);

  embed(embedding.get(), c.vocab, H, d_tokens, T, x.get(), bad_token.get(), st);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  for (int l = 0; l < c.n_layers; ++l) {
    const Layer& L = layers[static_cast<std::size_t>(l)];
    add_rms_norm(x.get(), nullptr, L.attn_norm.get(), T, H, c.rms_eps, h.get(), st);
    gemm.linear(h.get(), T, H, L.wqkv.get(), QKV, qkv.get(), 0.0f, st);
    rope_write_kv(qkv.get(), T, c.n_heads, c.n_kv_heads, c.head_dim, d_pos, inv_freq.get(), d_slots, q.get(),
                  k_cache(l), v_cache(l), block_size, st);
    const PagedKvView cache{k_cache(l), v_cache(l), block_size, c.n_kv_heads, c.head_dim};
    attention.run(q.get(), cache, ab, nullptr, scale, attn.get(), st);
    gemm.linear(attn.get(), T, Q, L.wo.get(), H, x.get(), 1.0f, st);  // += residual
    add_rms_norm(x.get(), nullptr, L.ffn_norm.get(), T, H, c.rms_eps, h.get(), st);
    gemm.linear(h.get(), T, H, L.w_gate_up.get(), 2 * F, gate_up.get(), 0.0f, st);
    swiglu(gate_up.get(), T, F, act.get(), st);
    gemm.linear(act.get(), T, F, L.w_down.get(), H, x.get(), 1.0f, st);  // += residual
  }
  if (n_out > 0) {
    add_rms_norm(x.get(), nullptr, output_norm.get(), T, H, c.rms_eps, h.get(), st);
    gather_rows(h.get(), H, reinterpret_cast<const std::int32_t*>(dev(o_logit_rows)), n_out, h_out.get(), st);
    gemm.linear(h_out.get(), n_out, H, lm_head, c.vocab, logits.get(), 0.0f, st);
  }
  return extra_offsets;
}

void CudaBackend::forward(const ForwardBatch& b, std::span<float> out) {
  Impl& m = *impl_;
  m.run(b, out.size(), {});
  const std::size_t n = b.logit_rows.size() * static_cast<std::size_t>(m.model->config().vocab);
  if (n > 0)
    check_cuda(cudaMemcpyAsync(out.data(), m.logits.get(), n * sizeof(float), cudaMemcpyDeviceToHost, m.stream),
               "download logits");
  check_cuda(cudaStreamSynchronize(m.stream), "forward");
}

void CudaBackend::forward_sample(const ForwardBatch& b, std::span<const SampleRow> rows, std::span<TokenId> out) {
  Impl& m = *impl_;
  const int vocab = m.model->config().vocab;
  check(rows.size() == b.logit_rows.size() && out.size() == rows.size(), ErrorCode::kInvalidArgument,
        "forward_sample: one sample row and one output per logits row");
  std::vector<DeviceSampleRow> params(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    validate(rows[i].params);
    params[i] = DeviceSampleRow{rows[i].params.temperature, rows[i].params.top_k, rows[i].params.top_p,
                                rows[i].params.seed, rows[i].step};
  }
  const std::vector<std::size_t> off =
      m.run(b, rows.size() * static_cast<std::size_t>(vocab), {std::as_bytes(std::span(params))});
  if (!rows.empty()) {
    m.tokens.reserve(rows.size());
    const std::size_t ws = sample_workspace_bytes(static_cast<std::int64_t>(rows.size()), vocab);
    m.sample_ws.reserve(std::max<std::size_t>(ws, 1));
    sample_tokens(m.logits.get(), static_cast<std::int64_t>(rows.size()), vocab,
                  reinterpret_cast<const DeviceSampleRow*>(m.metadata.get() + off[0]), m.tokens.get(),
                  m.sample_ws.get(), ws, m.stream);
    check_cuda(cudaMemcpyAsync(out.data(), m.tokens.get(), rows.size() * sizeof(TokenId), cudaMemcpyDeviceToHost,
                               m.stream),
               "download tokens");
  }
  check_cuda(cudaStreamSynchronize(m.stream), "forward");
}

const Model& CudaBackend::model() const { return *impl_->model; }

void CudaBackend::copy_block(BlockId src, BlockId dst) {
  Impl& m = *impl_;
  check(src >= 0 && src < m.num_blocks && dst >= 0 && dst < m.num_blocks, ErrorCode::kInvalidArgument,
        "KV block out of range");
  const std::size_t n = m.block_elems();
  for (int l = 0; l < m.model->config().n_layers; ++l)
    for (bf16* cache : {m.k_cache(l), m.v_cache(l)})
      check_cuda(cudaMemcpyAsync(cache + static_cast<std::size_t>(dst) * n, cache + static_cast<std::size_t>(src) * n,
                                 n * sizeof(bf16), cudaMemcpyDeviceToDevice, m.stream),
                 "copy KV block");
  check_cuda(cudaStreamSynchronize(m.stream), "copy KV block");
}

void CudaBackend::save_block(BlockId src, std::span<std::byte> dst) const {
  Impl& m = *impl_;
  check(src >= 0 && src < m.num_blocks, ErrorCode::kInvalidArgument, "KV block out of range");
  check(dst.size() == kv_bytes_per_block(m.model->config(), m.block_size), ErrorCode::kInvalidArgument,
        "KV block save: wrong buffer size");
  const std::size_t n = m.block_elems();
  std::byte* out = dst.data();
  const int layers = m.model->config().n_layers;
  for (int kv = 0; kv < 2; ++kv)
    for (int l = 0; l < layers; ++l) {
      const bf16* cache = kv == 0 ? m.k_cache(l) : m.v_cache(l);
      check_cuda(cudaMemcpyAsync(out, cache + static_cast<std::size_t>(src) * n, n * sizeof(bf16),
                                 cudaMemcpyDeviceToHost, m.stream),
                 "save KV block");
      out += n * sizeof(bf16);
    }
  check_cuda(cudaStreamSynchronize(m.stream), "save KV block");
}

void CudaBackend::load_block(BlockId dst, std::span<const std::byte> src) {
  Impl& m = *impl_;
  check(dst >= 0 && dst < m.num_blocks, ErrorCode::kInvalidArgument, "KV block out of range");
  check(src.size() == kv_bytes_per_block(m.model->config(), m.block_size), ErrorCode::kInvalidArgument,
        "KV block load: wrong buffer size");
  const std::size_t n = m.block_elems();
  const std::byte* in = src.data();
  const int layers = m.model->config().n_layers;
  for (int kv = 0; kv < 2; ++kv)
    for (int l = 0; l < layers; ++l) {
      bf16* cache = kv == 0 ? m.k_cache(l) : m.v_cache(l);
      check_cuda(cudaMemcpyAsync(cache + static_cast<std::size_t>(dst) * n, in, n * sizeof(bf16),
                                 cudaMemcpyHostToDevice, m.stream),
                 "load KV block");
      in += n * sizeof(bf16);
    }
  check_cuda(cudaStreamSynchronize(m.stream), "load KV block");
}

namespace {
class CudaProvider final : public BackendProvider {
 public:
  explicit CudaProvider(int device) : device_(device) {}
  [[nodiscard]] std::string name() const override { return "cuda:" + std::to_string(device_); }
  [[nodiscard]] std::size_t kv_bytes_per_block(const ModelConfig& config, int block_size) const override {
    return CudaBackend::kv_bytes_per_block(config, block_size);
  }
  [[nodiscard]] std::unique_ptr<BackendInterface> create(std::shared_ptr<const Model> model, int num_blocks,
                                                         int block_size) const override {
    return std::make_unique<detail::BackendAdapter<CudaBackend>>(std::move(model), num_blocks, block_size, device_);
  }

 private:
  int device_;
};
}  // namespace

std::shared_ptr<const BackendProvider> backend_provider(int device) {
  return std::make_shared<const CudaProvider>(device);
}

}  // namespace chunkwise::cuda
