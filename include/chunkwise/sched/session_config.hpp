#pragma once

#include <cstddef>
#include <functional>
#include <memory>

namespace chunkwise {

class BackendProvider;

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
};

// Throws Error(kInvalidArgument) naming the bad field.
void validate(const SessionConfig& config);

}  // namespace chunkwise
