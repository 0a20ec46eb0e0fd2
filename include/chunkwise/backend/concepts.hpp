// What InferenceSession needs from a backend: a paged KV cache of a given shape, one forward
// pass over a ragged batch that writes the wanted logits rows, and block moves (copy-on-write,
// host tier, swap) in the byte layout of its own choosing, kv_bytes_per_block bytes per block.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "chunkwise/backend/forward_batch.hpp"
#include "chunkwise/core/sampling.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise {

// The per-step part of the contract.
template <class B>
concept Backend = requires(B b, const B& cb, const ForwardBatch& batch, std::span<float> logits, BlockId id,
                           std::span<std::byte> out, std::span<const std::byte> in) {
  b.forward(batch, logits);
  b.copy_block(id, id);
  cb.save_block(id, out);
  b.load_block(id, in);
  { cb.num_blocks() } -> std::convertible_to<int>;
  { cb.block_size() } -> std::convertible_to<int>;
};

// A backend that also samples: forward() and then one token per logits row, drawn exactly as
// chunkwise::sample() would from the same logits, so only token ids leave the device.
template <class B>
concept SamplingBackend = Backend<B> &&
    requires(B b, const ForwardBatch& batch, std::span<const SampleRow> rows, std::span<TokenId> out) {
  b.forward_sample(batch, rows, out);
};

// A backend type that a session can make by itself: B(model, num_blocks, block_size), with the size
// of a KV block known before it exists (to size the pool from a memory budget).
template <class B>
concept ConstructibleBackend = Backend<B> && std::constructible_from < B,
        std::shared_ptr<const Model>,
int, int > &&requires(const ModelConfig& config) {
  { B::kv_bytes_per_block(config, 16) } -> std::convertible_to<std::size_t>;
};

// A backend for chunk reuse: it places a stored chunk's KV at new positions of a sequence's cache
// (keys re-rotated), reads a computed chunk's KV back for a ChunkStore, and runs
// ForwardBatch::recompute (chunkwise/backend/selective_recompute.hpp).
template <class B>
concept ChunkKvBackend = Backend<B> &&
    requires(B b, const B& cb, const ChunkKv& kv, std::int32_t position, std::span<const std::int64_t> slots,
             std::span<const TokenId> tokens) {
  b.write_chunk_kv(kv, position, slots);
  { cb.read_chunk_kv(tokens, position, slots) } -> std::same_as<ChunkKv>;
};

// A chunk-reuse backend with a device tier of chunk KV in front of the host ChunkStore: kept
// entries are placed device to device, without the upload (a GPU backend).
template <class B>
concept ChunkTierBackend = ChunkKvBackend<B> &&
    requires(B b, const ChunkKey& key, const ChunkKv& kv, std::int32_t position,
             std::span<const std::int64_t> slots, std::size_t bytes) {
  b.set_chunk_tier_capacity(bytes, bytes);  // device level, pinned host level
  b.keep_chunk_kv(key, kv);
  { b.write_kept_chunk_kv(key, position, slots) } -> std::same_as<bool>;
  { b.keeps_chunk_kv(key) } -> std::same_as<bool>;
};

}  // namespace chunkwise
