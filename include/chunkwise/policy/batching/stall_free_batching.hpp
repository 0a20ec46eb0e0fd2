// Stall-free batching with chunked prefills: SARATHI (arXiv 2308.16369) and Sarathi-Serve (OSDI 2024).
// Every step has a fixed token budget C = min(token_budget, max_batch_tokens), chosen so that one
// step meets the time-between-tokens target, and fills it in this order:
//  (a) every running decode, one token each: decodes never wait behind a prefill (no generation stalls);
//  (b) ongoing prefills (running, prompt not done) take min(rest of the prompt, budget left): they
//      finish before new work starts, which bounds the KV held by half-done prompts;
//  (c) new requests in priority, then arrival order, each with the budget that is left, while
//      tokens, sequences and memory last (keeping one free block per running sequence, so decodes
//      can grow) and while fewer than max_partial_prefills prompts would be left half-done after
//      this step (0 = no cap). A prompt that finishes in this step does not count, so many short
//      prompts still share a step; the cap limits how many long prompts are cut at once.
// A chunk that does not finish its prompt ends on a KV-block boundary when that leaves it
// non-empty, so no block is left half-filled between steps (the next chunk starts on a fresh block).
#pragma once

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/batching/detail/step_budget.hpp"

namespace chunkwise {

class StallFreeBatching {
 public:
  explicit StallFreeBatching(int token_budget = 512, int max_partial_prefills = 1)
      : token_budget_(token_budget), max_partial_prefills_(max_partial_prefills) {
    check(token_budget >= 1, ErrorCode::kInvalidArgument, "stall-free batching: token_budget must be >= 1");
    check(max_partial_prefills >= 0, ErrorCode::kInvalidArgument,
          "stall-free batching: max_partial_prefills must be >= 0 (0 = no cap)");
  }

  [[nodiscard]] int token_budget() const { return token_budget_; }
  [[nodiscard]] int max_partial_prefills() const { return max_partial_prefills_; }

  StepPlan plan(const SchedulerView& view) const {
    detail::StepBudget step(view, token_budget_, detail::ChunkEnd::kBlockBoundary);
    for (const SequenceView& s : view.running)  // (a)
      if (s.is_decode()) step.add(s, 1, 0);
    int partial = 0;                              // prompts left half-done after this step
    for (const SequenceView& s : view.running) {  // (b)
      if (s.is_decode() || s.uncomputed() <= 0) continue;
      if (step.add(s, s.uncomputed(), 0) < s.uncomputed()) ++partial;
    }
    const int running = static_cast<int>(view.running.size());
    int admitted = 0;
    for (const SequenceView* w : detail::by_priority(view.waiting)) {  // (c)
      const int n = step.room(*w, w->uncomputed(), running + admitted);
      if (n <= 0) break;  // no overtaking within FCFS
      const bool cut = n < w->uncomputed();
      if (cut && max_partial_prefills_ > 0 && partial >= max_partial_prefills_) break;
      step.take(*w, n);
      partial += cut ? 1 : 0;
      ++admitted;
    }
    return std::move(step).finish();
  }

 private:
  int token_budget_;
  int max_partial_prefills_;
};

}  // namespace chunkwise
