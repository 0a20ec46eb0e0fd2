#pragma once

#include <cstdint>

#include "chunkwise/kv/kv_types.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"

namespace chunkwise {

// Chunk reuse (Request::segments with SessionConfig::chunk_store), counted at admission.
struct ReuseStats {
  std::int64_t requests = 0;           // prompts planned by the reuse policy
  std::int64_t chunks_stored = 0;      // chunk segments prefilled on their own and put into the store
  std::int64_t chunks_loaded = 0;      // chunk segments whose KV was placed from a tier
  std::int64_t device_hits = 0;        // of those, placed from the backend's chunk tier (either level)
  std::int64_t chunks_missed = 0;      // planned to load but not found (evicted, corrupt file): computed
  std::int64_t chunks_computed = 0;    // planned, but computed: cheaper than loading (the loading controller)
  std::int64_t tokens_loaded = 0;      // rows of loaded chunks
  std::int64_t tokens_recomputed = 0;  // rows of loaded chunks recomputed past the check layer
  double fill_s = 0;                   // prefilling chunks on their own
  double load_s = 0;                   // placing loaded KV into the cache
};

// Counters since the session started. Step time is split between prefill and decode by
// their share of the step's rows, since a mixed step does both at once.
struct SessionMetrics {
  std::int64_t steps = 0;
  std::int64_t requests_submitted = 0;
  std::int64_t requests_finished = 0;
  std::int64_t prompt_tokens = 0;           // of submitted requests
  std::int64_t prompt_tokens_computed = 0;  // prompt positions whose KV was computed
  std::int64_t prompt_tokens_cached = 0;    // prompt tokens found in the prefix cache at first admission
  std::int64_t recomputed_tokens = 0;       // positions computed again after a preemption
  std::int64_t prefill_tokens = 0;          // prefill rows run (every chunk, recomputes included)
  std::int64_t decode_tokens = 0;           // decode rows run
  std::int64_t generated_tokens = 0;        // tokens sampled
  double forward_s = 0;
  double prefill_s = 0;
  double decode_s = 0;
  int kv_blocks_total = 0;
  int kv_blocks_peak = 0;             // most blocks referenced by sequences at once
  std::int64_t preemptions = 0;       // all preemptions
  std::int64_t swap_preemptions = 0;  // of which swapped to host RAM
  std::int64_t requests_cancelled = 0;
  SparseStats sparse;  // masks of the sparse policy (zero with dense attention)
  ReuseStats reuse;
};

// What one step did.
struct StepResult {
  int rows = 0;
  int prefill_rows = 0;
  int decode_rows = 0;
  int sequences = 0;
  double seconds = 0;
  int finished = 0;
  int prefix_hit_tokens = 0;  // tokens admissions found cached this step
  KvUsage kv;                 // block counts after the step
};

}  // namespace chunkwise
