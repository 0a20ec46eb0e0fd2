// Prefill-first batching: iteration-level scheduling as Orca (OSDI 2022) introduced it and vLLM V0
// runs it by default (no chunked prefill). It is the baseline the other policies are measured against.
//  - When a waiting prompt can be admitted, the step is prefill-only: whole prompts in priority, then
//    arrival order, while the token, sequence and memory budgets last. Whole prompts, so a prompt's
//    prefill is one forward pass and its first token comes as early as possible.
//  - No overtaking: the first prompt that does not fit ends admission (FCFS within a priority).
//  - A prompt longer than the whole token budget could never run whole, so when it is first in the
//    step it is cut to the budget; when nothing runs, the first prompt may also be cut to the memory
//    that is free. Either way a step never comes back empty while something fits.
//  - One free block per running sequence, the one being admitted included, stays in reserve when
//    admitting (vLLM's watermark), so the next decode step needs no preemption. Without the
//    admitted one's own block, a readmitted sequence ending on a block boundary was preempted at the
//    next step and readmitted at the one after, forever, with no decode in between (a livelock).
//  - Otherwise the step decodes every running sequence, and continues any prompt that was cut.
// Running decodes wait during every prefill step: these are the generation stalls SARATHI removes.
#pragma once

#include "chunkwise/policy/batching/detail/step_budget.hpp"

namespace chunkwise {

class PrefillFirstBatching {
 public:
  StepPlan plan(const SchedulerView& view) const {
    using detail::StepBudget;
    const int running = static_cast<int>(view.running.size());
    StepBudget prefill(view, view.budgets.max_batch_tokens, detail::ChunkEnd::kAnywhere);
    // Prompts cut in earlier steps are prefills too: they continue first (they arrived first).
    for (const SequenceView& s : view.running)
      if (!s.is_decode()) prefill.add(s, s.uncomputed(), 0);
    int admitted = 0;
    for (const SequenceView* w : detail::by_priority(view.waiting)) {
      int n = w->uncomputed();
      if (n > prefill.tokens()) {
        if (!prefill.empty()) break;
        n = prefill.tokens();  // longer than the whole budget: cut, since it is first in the step
      }
      const int reserve = running + admitted + 1;
      if (n <= 0 || prefill.seqs() <= 0) break;
      if (!prefill.fits(*w, n, reserve)) {
        if (!prefill.empty() || running > 0) break;  // wait for memory, as vLLM does
        n = prefill.room(*w, n, 0);                  // nothing runs: cut to the memory that is free
        if (n <= 0) break;
      }
      prefill.take(*w, n);
      ++admitted;
    }
    if (admitted > 0) return std::move(prefill).finish();

    StepBudget decode(view, view.budgets.max_batch_tokens, detail::ChunkEnd::kAnywhere);
    for (const SequenceView& s : view.running)
      if (s.is_decode()) decode.add(s, 1, 0);
    for (const SequenceView& s : view.running)
      if (!s.is_decode()) decode.add(s, s.uncomputed(), 0);
    return std::move(decode).finish();
  }
};

}  // namespace chunkwise
