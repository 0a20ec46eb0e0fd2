// Moving a chunk's KV between a ChunkStore entry and a sequence's paged cache, the part every
// backend shares: the checks, and the key re-rotation done on the host (the store holds host bytes,
// so a backend rotates a staging copy and uploads it).
#pragma once

#include <cstdint>
#include <span>

#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/model/config.hpp"

namespace chunkwise {

// Rotates post-RoPE keys k [rows, n_kv_heads, head_dim] in place by delta positions (rotate-half
// pairs (i, i + head_dim/2), as cpu::rope). A key rotated at position p becomes the key at p + delta:
// every pair is a plain rotation by p * inv_freq[i], so rotations compose, for Llama-3 scaled
// frequencies too (the scaling depends on the frequency, not the position). The angle delta *
// inv_freq is formed in double, so moving a key adds less error than computing it at p + delta.
void rotate_keys(std::span<float> k, int n_kv_heads, int head_dim, std::int32_t delta,
                 std::span<const float> inv_freq);

// Throws Error(kInvalidArgument) unless kv is consistent and shaped for the model (layers, KV
// width), position >= 0 and slots has one entry per token inside a pool of num_blocks blocks of
// block_size tokens.
void check_chunk_placement(const ChunkKv& kv, const ModelConfig& config, std::int32_t position,
                           std::span<const std::int64_t> slots, int num_blocks, int block_size);

}  // namespace chunkwise
