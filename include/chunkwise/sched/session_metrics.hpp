#pragma once

#include <cstdint>

#include "chunkwise/kv/kv_types.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"

namespace chunkwise {

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
