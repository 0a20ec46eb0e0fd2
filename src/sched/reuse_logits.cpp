#include "chunkwise/sched/reuse_logits.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/reuse/reuse_recompute.hpp"
#include "chunkwise/sched/detail/place_chunks.hpp"

namespace chunkwise {

namespace {

// Rows [first, first + tokens) of one sequence whose pages are 0, 1, ... (slot == position).
ForwardBatch rows_at(std::span<const TokenId> tokens, std::int32_t first, int block_size) {
  ForwardBatch b;
  b.tokens.assign(tokens.begin(), tokens.end());
  const auto n = static_cast<std::int32_t>(tokens.size());
  b.positions.resize(static_cast<std::size_t>(n));
  std::iota(b.positions.begin(), b.positions.end(), first);
  b.slots.assign(b.positions.begin(), b.positions.end());
  const std::int32_t kv_len = first + n;
  const int pages = (kv_len + block_size - 1) / block_size;
  b.pages.resize(static_cast<std::size_t>(pages));
  std::iota(b.pages.begin(), b.pages.end(), 0);
  b.query_start = {0, n};
  b.page_start = {0, pages};
  b.kv_len = {kv_len};
  return b;
}

}  // namespace

ReuseLogits reuse_logits(std::shared_ptr<const Model> model, const PromptLayout& layout,
                         AnyReusePolicy& policy, ChunkStore& store, std::span<const TokenId> continuation,
                         int block_size, const BackendProvider* provider) {
  check(model != nullptr, ErrorCode::kInvalidArgument, "reuse_logits: no model");
  check(block_size > 0, ErrorCode::kInvalidArgument, "reuse_logits: block_size must be > 0");
  const long long total =
      static_cast<long long>(layout.tokens.size()) + static_cast<long long>(continuation.size());
  check(total <= model->config().max_context, ErrorCode::kContextOverflow,
        std::to_string(total) + " tokens exceed the model's context of " +
            std::to_string(model->config().max_context));
  AnyBackend backend = BackendMaker<AnyBackend>::make(
      provider, model, static_cast<int>(std::max(1LL, (total + block_size - 1) / block_size)), block_size);
  return reuse_logits(backend, model->config(), layout, policy, store, continuation);
}

ReuseLogits reuse_logits(AnyBackend& backend, const ModelConfig& c, const PromptLayout& layout,
                         AnyReusePolicy& policy, ChunkStore& store, std::span<const TokenId> continuation) {
  layout.validate();
  const std::int32_t n = layout.size();
  check(n > 0, ErrorCode::kInvalidArgument, "reuse_logits: empty prompt");
  const long long total = static_cast<long long>(n) + static_cast<long long>(continuation.size());
  check(total <= c.max_context, ErrorCode::kContextOverflow,
        std::to_string(total) + " tokens exceed the model's context of " + std::to_string(c.max_context));
  const int block_size = backend.block_size();
  check(total <= static_cast<long long>(backend.num_blocks()) * block_size, ErrorCode::kKvExhausted,
        "reuse_logits: the backend's KV pool holds fewer than " + std::to_string(total) + " tokens");
  check(backend.supports_chunk_kv(), ErrorCode::kUnsupported,
        "reuse_logits: the backend cannot move chunk KV");

  ReusePlan plan = policy.plan(layout, store);
  plan.validate();
  check(plan.rows() == n, ErrorCode::kInvalidArgument, "reuse_logits: the plan does not cover the prompt");
  ReuseLogits out;
  ForwardBatch prompt = rows_at(layout.tokens, 0, block_size);
  prompt.logit_rows = {n - 1};
  const std::vector<ReusePlan::LoadSpan> loaded =
      detail::place_planned_chunks(backend, store, layout.tokens, plan, 0, prompt.slots, out.stats);
  SelectiveRecompute recompute;
  SelectiveRecomputeReport report;
  if (!loaded.empty()) {
    recompute = to_selective_recompute(
        make_reuse_plan(layout, loaded, plan.check_layer, plan.min_tokens, plan.gradual), 0, n);
    recompute.report = &report;
    prompt.recompute = &recompute;
  }
  const auto vocab = static_cast<std::size_t>(c.vocab);
  out.logits.resize((1 + continuation.size()) * vocab);
  backend.forward(prompt, std::span<float>(out.logits).first(vocab));
  if (!loaded.empty()) {
    std::int64_t always = 0;
    for (const auto& a : recompute.always) always += a.end - a.begin;
    out.recomputed_rows = static_cast<std::int64_t>(report.rows.size()) - always;
  }
  if (!continuation.empty()) {
    ForwardBatch next = rows_at(continuation, n, block_size);
    next.logit_rows.resize(continuation.size());
    std::iota(next.logit_rows.begin(), next.logit_rows.end(), 0);
    backend.forward(next, std::span<float>(out.logits).subspan(vocab));
  }
  return out;
}

}  // namespace chunkwise
