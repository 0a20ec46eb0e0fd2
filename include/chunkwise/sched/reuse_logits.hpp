// The next-token distributions a reuse policy gives a prompt, for quality measurements (`chunkwise
// eval-reuse`): the prompt is prefilled the way InferenceSession prefills it under the policy
// (detail::place_planned_chunks, then one selective forward), then teacher-forced through a
// continuation (for example the full prefill's answer), so every answer position can be compared
// with a full prefill's logits (prompt_logits()).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "chunkwise/backend/any_backend.hpp"
#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/model/model.hpp"
#include "chunkwise/policy/reuse/any_reuse_policy.hpp"
#include "chunkwise/sched/session_metrics.hpp"

namespace chunkwise {

struct ReuseLogits {
  // [1 + continuation.size(), vocab]: the prompt's last row, then every continuation token's row.
  std::vector<float> logits;
  ReuseStats stats;                  // chunks and rows loaded (nothing is stored or timed)
  std::int64_t recomputed_rows = 0;  // loaded rows recomputed past the check layer
};

// Chunks the store lacks are computed normally (the store is read, never filled). Throws
// Error(kUnsupported) for a backend without chunk reuse, kInvalidArgument for an invalid layout or
// plan, kContextOverflow past the model's context.
ReuseLogits reuse_logits(std::shared_ptr<const Model> model, const PromptLayout& layout,
                         AnyReusePolicy& policy, ChunkStore& store, std::span<const TokenId> continuation,
                         int block_size = 16, const BackendProvider* provider = nullptr);

// The same on a backend made once for many prompts (its KV blocks are reused: every slot read is
// written first). It must hold the prompt and the continuation (kKvExhausted otherwise).
ReuseLogits reuse_logits(AnyBackend& backend, const ModelConfig& config, const PromptLayout& layout,
                         AnyReusePolicy& policy, ChunkStore& store, std::span<const TokenId> continuation);

}  // namespace chunkwise
