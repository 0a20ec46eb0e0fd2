// The read-only view a batching policy plans from, and the plan it returns.
#pragma once

#include <span>
#include <vector>

#include "chunkwise/core/types.hpp"

namespace chunkwise {

// One sequence as a policy sees it. "Uncomputed" tokens are those whose KV is not yet in the
// cache: the prompt (or its rest) for a prefill, exactly one for a decode.
struct SequenceView {
  RequestId id = 0;
  int prompt_len = 0;
  int total_len = 0;  // prompt + generated
  int computed = 0;   // tokens whose KV is in the cache
  int generated = 0;
  int max_new_tokens = 0;
  int priority = 0;  // higher goes first where a policy orders by it
  double submitted_s = 0;
  std::span<const TokenId> tokens;  // prompt, then generated (prefix grouping reads them)
  // Waiting sequences only: blocks of the cached prefix (`computed`) that admission takes out of
  // Budgets::free_blocks (cached blocks nobody holds get pinned; host-tier blocks get loaded).
  int prefix_blocks_taken = 0;
  [[nodiscard]] int uncomputed() const { return total_len - computed; }
  [[nodiscard]] bool is_decode() const { return generated > 0 && uncomputed() == 1; }
};

struct Budgets {
  int max_batch_tokens = 0;  // tokens in one forward pass
  int max_sequences = 0;     // sequences in one forward pass
  int free_blocks = 0;       // KV blocks a plan may newly allocate (free + evictable cached)
  int block_size = 16;
  int total_blocks = 0;  // KV blocks in the pool
};

struct SchedulerView {
  std::span<const SequenceView> running;  // admitted: holds KV, order of admission
  std::span<const SequenceView> waiting;  // not admitted yet (or preempted), order of arrival
  Budgets budgets;

  // Free blocks a sequence takes to compute n more tokens: new blocks, plus (when it is admitted)
  // the cached prefix blocks it pins.
  [[nodiscard]] int blocks_needed(const SequenceView& s, int n) const {
    const int bs = budgets.block_size;
    const int have = (s.computed + bs - 1) / bs;
    const int need = (s.computed + n + bs - 1) / bs;
    return need - have + s.prefix_blocks_taken;
  }
};

// Compute tokens [computed, computed + num_tokens) of a sequence this step.
struct ScheduledChunk {
  RequestId id = 0;
  int num_tokens = 0;
};

struct StepPlan {
  std::vector<ScheduledChunk> chunks;  // decodes are chunks of one token
  [[nodiscard]] bool empty() const { return chunks.empty(); }
};

}  // namespace chunkwise
