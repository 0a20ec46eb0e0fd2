// Packed prefill batching, after Prepacking (Zhao et al., arXiv 2404.09529), for workloads of many
// short prompts. Prepacking bin-packs prompts of different lengths into one padded sequence with
// restarted positions and a block-diagonal mask, so no compute goes to padding. Our batches are
// already ragged: every prompt gets its own positions and attends only to itself, so packing here
// is only the choice of which whole prompts share a forward pass. Each step is one bin of
// C = min(token_budget, max_batch_tokens) tokens:
//  - running decodes first (one token each), then prompts cut in earlier steps continue, so
//    neither waits behind new prompts;
//  - the oldest request of the highest priority goes in first, so packing can never starve it; if
//    it does not fit whole in what is left (tokens or memory) and no other prefill is in the step,
//    it is cut to what is left (ending on a KV-block boundary when it can) and runs alone;
//  - then first-fit decreasing over the rest of the queue, one priority class after the other,
//    higher first: the longest prompt that still fits goes next. Prompts are never split here, so
//    a prompt's prefill is one pass, and the budget fills with whole prompts (FCFS would cut one);
//  - admission keeps one free block per running sequence in reserve, the admitted one included, so
//    decodes can grow.
#pragma once

#include <algorithm>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/batching/detail/step_budget.hpp"

namespace chunkwise {

class PackedPrefillBatching {
 public:
  explicit PackedPrefillBatching(int token_budget = 2048) : token_budget_(token_budget) {
    check(token_budget >= 1, ErrorCode::kInvalidArgument,
          "packed prefill batching: token_budget must be >= 1");
  }

  [[nodiscard]] int token_budget() const { return token_budget_; }

  StepPlan plan(const SchedulerView& view) const {
    detail::StepBudget step(view, token_budget_, detail::ChunkEnd::kBlockBoundary);
    for (const SequenceView& s : view.running)
      if (s.is_decode()) step.add(s, 1, 0);
    bool prefill = false;
    for (const SequenceView& s : view.running)
      if (!s.is_decode() && s.uncomputed() > 0) prefill = step.add(s, s.uncomputed(), 0) > 0 || prefill;

    std::vector<const SequenceView*> queue = detail::by_priority(view.waiting);
    if (queue.empty()) return std::move(step).finish();
    const int running = static_cast<int>(view.running.size());
    const SequenceView& head = *queue.front();
    if (!prefill && !step.fits_whole(head, running + 1)) {
      // Cut, and alone. A cut prompt has no decode next step, so only the running ones keep a
      // block; it stops short of its last token so that it really is cut.
      step.add(head, running > 0 ? head.uncomputed() - 1 : head.uncomputed(), running);
      return std::move(step).finish();
    }
    // Head first (when it fits), then first-fit decreasing within each priority class.
    std::stable_sort(queue.begin() + 1, queue.end(), [](const SequenceView* a, const SequenceView* b) {
      if (a->priority != b->priority) return a->priority > b->priority;
      return a->uncomputed() > b->uncomputed();
    });
    int admitted = 0;
    for (const SequenceView* w : queue) {
      if (!step.fits_whole(*w, running + admitted + 1)) continue;
      step.take(*w, w->uncomputed());
      ++admitted;
    }
    return std::move(step).finish();
  }

 private:
  int token_budget_;
};

}  // namespace chunkwise
