// A backend chosen at run time (CPU or CUDA, picked by a command-line flag or a service's
// config) behind one virtual call per step. InferenceSession<..., AnyBackend> takes its device
// from SessionConfig::backend, a BackendProvider; null means the CPU reference.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "chunkwise/backend/concepts.hpp"
#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/core/sampling.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise {

// The Backend contract as a virtual interface.
class BackendInterface {
 public:
  virtual ~BackendInterface() = default;
  virtual void forward(const ForwardBatch& batch, std::span<float> logits) = 0;
  // forward() and one token per logits row (rows.size() == batch.logit_rows.size()).
  virtual void forward_sample(const ForwardBatch& batch, std::span<const SampleRow> rows,
                              std::span<TokenId> out) = 0;
  virtual void copy_block(BlockId src, BlockId dst) = 0;
  virtual void save_block(BlockId src, std::span<std::byte> dst) const = 0;
  virtual void load_block(BlockId dst, std::span<const std::byte> src) = 0;
  [[nodiscard]] virtual int num_blocks() const = 0;
  [[nodiscard]] virtual int block_size() const = 0;
  // Chunk reuse (ChunkKvBackend, ChunkTierBackend). A backend without it answers false to
  // supports_chunk_kv() and throws Error(kUnsupported) from the KV moves; one without a device
  // tier keeps nothing and finds nothing kept.
  [[nodiscard]] virtual bool supports_chunk_kv() const = 0;
  virtual void write_chunk_kv(const ChunkKv& kv, std::int32_t position,
                              std::span<const std::int64_t> slots) = 0;
  [[nodiscard]] virtual ChunkKv read_chunk_kv(std::span<const TokenId> tokens, std::int32_t position0,
                                              std::span<const std::int64_t> slots) const = 0;
  virtual void set_chunk_tier_capacity(std::size_t device_bytes, std::size_t host_bytes) = 0;
  virtual void keep_chunk_kv(const ChunkKey& key, const ChunkKv& kv) = 0;
  [[nodiscard]] virtual bool write_kept_chunk_kv(const ChunkKey& key, std::int32_t position,
                                                 std::span<const std::int64_t> slots) = 0;
  [[nodiscard]] virtual bool keeps_chunk_kv(const ChunkKey& key) const = 0;
};

// Makes backends of one kind (a device): how many bytes a KV block takes there, so the pool can be
// sized from a memory budget before the backend exists, and the backend itself.
class BackendProvider {
 public:
  virtual ~BackendProvider() = default;
  [[nodiscard]] virtual std::string name() const = 0;
  [[nodiscard]] virtual std::size_t kv_bytes_per_block(const ModelConfig& config, int block_size) const = 0;
  [[nodiscard]] virtual std::unique_ptr<BackendInterface> create(std::shared_ptr<const Model> model,
                                                                 int num_blocks, int block_size) const = 0;
};

namespace detail {

template <class B>
class BackendAdapter final : public BackendInterface {
 public:
  template <class... Args>
  explicit BackendAdapter(Args&&... args) : b_(std::forward<Args>(args)...) {}
  void forward(const ForwardBatch& batch, std::span<float> logits) override { b_.forward(batch, logits); }
  void forward_sample(const ForwardBatch& batch, std::span<const SampleRow> rows,
                      std::span<TokenId> out) override {
    if constexpr (SamplingBackend<B>) {
      b_.forward_sample(batch, rows, out);
    } else {  // logits to the host, sampled there
      check(rows.size() == batch.logit_rows.size() && out.size() == rows.size(), ErrorCode::kInvalidArgument,
            "forward_sample: one sample row and one output per logits row");
      const int vocab = b_.model().config().vocab;
      logits_.resize(rows.size() * static_cast<std::size_t>(vocab));
      b_.forward(batch, logits_);
      for (std::size_t i = 0; i < rows.size(); ++i)
        out[i] =
            sample(logits_.data() + i * static_cast<std::size_t>(vocab), vocab, rows[i].params, rows[i].step);
    }
  }
  void copy_block(BlockId src, BlockId dst) override { b_.copy_block(src, dst); }
  void save_block(BlockId src, std::span<std::byte> dst) const override { b_.save_block(src, dst); }
  void load_block(BlockId dst, std::span<const std::byte> src) override { b_.load_block(dst, src); }
  [[nodiscard]] int num_blocks() const override { return b_.num_blocks(); }
  [[nodiscard]] int block_size() const override { return b_.block_size(); }

  [[nodiscard]] bool supports_chunk_kv() const override { return ChunkKvBackend<B>; }
  void write_chunk_kv(const ChunkKv& kv, std::int32_t position,
                      std::span<const std::int64_t> slots) override {
    if constexpr (ChunkKvBackend<B>) {
      b_.write_chunk_kv(kv, position, slots);
    } else {
      unsupported();
    }
  }
  [[nodiscard]] ChunkKv read_chunk_kv(std::span<const TokenId> tokens, std::int32_t position0,
                                      std::span<const std::int64_t> slots) const override {
    if constexpr (ChunkKvBackend<B>) {
      return b_.read_chunk_kv(tokens, position0, slots);
    } else {
      unsupported();
    }
  }
  void set_chunk_tier_capacity(std::size_t device_bytes, std::size_t host_bytes) override {
    if constexpr (ChunkTierBackend<B>) b_.set_chunk_tier_capacity(device_bytes, host_bytes);
  }
  void keep_chunk_kv(const ChunkKey& key, const ChunkKv& kv) override {
    if constexpr (ChunkTierBackend<B>) b_.keep_chunk_kv(key, kv);
  }
  [[nodiscard]] bool write_kept_chunk_kv(const ChunkKey& key, std::int32_t position,
                                         std::span<const std::int64_t> slots) override {
    if constexpr (ChunkTierBackend<B>) {
      return b_.write_kept_chunk_kv(key, position, slots);
    } else {
      return false;
    }
  }
  [[nodiscard]] bool keeps_chunk_kv(const ChunkKey& key) const override {
    if constexpr (ChunkTierBackend<B>) {
      return b_.keeps_chunk_kv(key);
    } else {
      return false;
    }
  }

 private:
  [[noreturn]] static void unsupported() {
    throw Error(ErrorCode::kUnsupported, "this backend cannot move chunk KV (chunk reuse)");
  }

  B b_;
  std::vector<float> logits_;
};

}  // namespace detail

// The provider of any compile-time Backend B: `ProviderOf<CpuBackend>`, `ProviderOf<cuda::CudaBackend>`.
template <ConstructibleBackend B>
class ProviderOf final : public BackendProvider {
 public:
  explicit ProviderOf(std::string name) : name_(std::move(name)) {}
  [[nodiscard]] std::string name() const override { return name_; }
  [[nodiscard]] std::size_t kv_bytes_per_block(const ModelConfig& config, int block_size) const override {
    return B::kv_bytes_per_block(config, block_size);
  }
  [[nodiscard]] std::unique_ptr<BackendInterface> create(std::shared_ptr<const Model> model, int num_blocks,
                                                         int block_size) const override {
    return std::make_unique<detail::BackendAdapter<B>>(std::move(model), num_blocks, block_size);
  }

 private:
  std::string name_;
};

class AnyBackend {
 public:
  explicit AnyBackend(std::unique_ptr<BackendInterface> impl) : impl_(std::move(impl)) {}
  void forward(const ForwardBatch& batch, std::span<float> logits) { impl_->forward(batch, logits); }
  void forward_sample(const ForwardBatch& batch, std::span<const SampleRow> rows, std::span<TokenId> out) {
    impl_->forward_sample(batch, rows, out);
  }
  void copy_block(BlockId src, BlockId dst) { impl_->copy_block(src, dst); }
  void save_block(BlockId src, std::span<std::byte> dst) const { impl_->save_block(src, dst); }
  void load_block(BlockId dst, std::span<const std::byte> src) { impl_->load_block(dst, src); }
  [[nodiscard]] int num_blocks() const { return impl_->num_blocks(); }
  [[nodiscard]] int block_size() const { return impl_->block_size(); }

  // Chunk reuse, when the backend behind it has it (supports_chunk_kv()).
  [[nodiscard]] bool supports_chunk_kv() const { return impl_->supports_chunk_kv(); }
  void write_chunk_kv(const ChunkKv& kv, std::int32_t position, std::span<const std::int64_t> slots) {
    impl_->write_chunk_kv(kv, position, slots);
  }
  [[nodiscard]] ChunkKv read_chunk_kv(std::span<const TokenId> tokens, std::int32_t position0,
                                      std::span<const std::int64_t> slots) const {
    return impl_->read_chunk_kv(tokens, position0, slots);
  }
  void set_chunk_tier_capacity(std::size_t device_bytes, std::size_t host_bytes = 0) {
    impl_->set_chunk_tier_capacity(device_bytes, host_bytes);
  }
  void keep_chunk_kv(const ChunkKey& key, const ChunkKv& kv) { impl_->keep_chunk_kv(key, kv); }
  [[nodiscard]] bool write_kept_chunk_kv(const ChunkKey& key, std::int32_t position,
                                         std::span<const std::int64_t> slots) {
    return impl_->write_kept_chunk_kv(key, position, slots);
  }
  [[nodiscard]] bool keeps_chunk_kv(const ChunkKey& key) const { return impl_->keeps_chunk_kv(key); }

 private:
  std::unique_ptr<BackendInterface> impl_;
};

// The CPU reference's provider (what a null SessionConfig::backend means).
inline std::shared_ptr<const BackendProvider> cpu_backend_provider() {
  static const auto provider = std::make_shared<const ProviderOf<CpuBackend>>("cpu");
  return provider;
}

// How InferenceSession makes its backend: B(model, num_blocks, block_size) for a backend type that
// can make itself; through the provider (SessionConfig::backend, null = CPU) for AnyBackend.
template <class B>
struct BackendMaker {
  static_assert(ConstructibleBackend<B>,
                "a session's backend is constructible from (model, blocks, block_size)");
  static std::size_t kv_bytes_per_block(const BackendProvider*, const ModelConfig& config, int block_size) {
    return B::kv_bytes_per_block(config, block_size);
  }
  static B make(const BackendProvider*, std::shared_ptr<const Model> model, int num_blocks, int block_size) {
    return B(std::move(model), num_blocks, block_size);
  }
};

template <>
struct BackendMaker<AnyBackend> {
  static std::size_t kv_bytes_per_block(const BackendProvider* provider, const ModelConfig& config,
                                        int block_size) {
    return (provider ? provider : cpu_backend_provider().get())->kv_bytes_per_block(config, block_size);
  }
  static AnyBackend make(const BackendProvider* provider, std::shared_ptr<const Model> model, int num_blocks,
                         int block_size) {
    return AnyBackend((provider ? provider : cpu_backend_provider().get())
                          ->create(std::move(model), num_blocks, block_size));
  }
};

}  // namespace chunkwise
