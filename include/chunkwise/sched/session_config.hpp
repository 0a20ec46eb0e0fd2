#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/reuse/loading_control.hpp"

namespace chunkwise {

class BackendProvider;
class ChunkStore;

// What happens to a running sequence when decodes need memory that is not there.
enum class Preemption {
  kRecompute,  // drop its KV and compute it again later (vLLM V1); cached prefix blocks survive
  kSwap,       // copy its KV to host RAM and bring it back (vLLM V0); recompute if swap space is short
};

struct SessionConfig {
  int block_size = 16;              // tokens per KV block
  int kv_blocks = 0;                // KV blocks in the pool; 0 = as many as kv_memory_mb holds
  std::size_t kv_memory_mb = 1024;  // KV budget when kv_blocks is 0
  int max_batch_tokens = 2048;      // tokens in one forward pass
  int max_sequences = 128;          // sequences in one forward pass
  bool prefix_caching = true;       // reuse the KV of full blocks across requests
  int host_cache_blocks = 0;        // host-RAM tier for evicted prefix blocks (0 = none)
  Preemption preemption = Preemption::kRecompute;
  int swap_blocks = 0;            // host-RAM blocks for swapped sequences; 0 = as many as the pool
  std::function<double()> clock;  // seconds; default: steady clock from session start
  // Where an InferenceSession<..., AnyBackend> runs (cpu_backend_provider(), cuda::backend_provider());
  // null = the CPU reference. Sessions with a compile-time backend ignore it.
  std::shared_ptr<const BackendProvider> backend;
  // Chunk reuse (the Reuse policy): where the KV of prompt chunks (Request::segments) is kept,
  // shared between sessions if wanted; null = none, and every prompt is prefilled normally.
  std::shared_ptr<ChunkStore> chunk_store;
  // A chunk segment the store lacks is prefilled on its own at admission and stored (CacheBlend's
  // offline step, done online), so the next prompt holding it can reuse it. Off: only chunks put
  // into the store beforehand are reused.
  bool fill_chunk_store = true;
  // What a chunk is prefilled after when it is stored (CacheBlend prefixes the model's
  // instruction-start tokens): these become the attention sink, as the prompt's first token is in
  // context; without them the chunk's own first token would be, and its KV would deviate more.
  // Empty: the tokenizer's BOS when the model has one. Changing it changes what stored KV means:
  // give a persistent store another salt.
  std::vector<TokenId> chunk_context;
  // The backend's chunk tier in front of the store (ChunkTierBackend): its device level, and its
  // pinned host level (entries in the cache's dtype, copied over the host link a few layers at a
  // time under the forward); 0 = none.
  std::size_t chunk_device_mb = 0;
  std::size_t chunk_pinned_mb = 0;
  // CacheBlend's loading controller (policy/reuse/loading_control.hpp): a planned chunk held only
  // in host RAM or on disk is computed instead when loading it is expected to take longer than the
  // prefill it saves, by costs the session measures (starting from reuse_load_costs; a cost not
  // measured yet is measured by trying: an unknown tier loads, an unknown prefill computes). Not
  // with a backend chunk tier (chunk_device_mb, chunk_pinned_mb), where a chunk loaded once serves
  // later prompts from it. Off: every stored chunk the policy plans is loaded.
  bool reuse_load_control = false;
  LoadCosts reuse_load_costs;
};

// Throws Error(kInvalidArgument) naming the bad field.
void validate(const SessionConfig& config);

}  // namespace chunkwise
