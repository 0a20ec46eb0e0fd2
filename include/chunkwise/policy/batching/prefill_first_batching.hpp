// Prefill-first batching: iteration-level scheduling as Orca (OSDI 2022) introduced it and vLLM V0
// runs it by default (no chunked prefill). It is the baseline the other policies are measured against.
//  - When a waiting prompt can be admitted, the step is prefill-only: whole prompts in priority, then
//    arrival order, while the token, sequence and memory budgets last. Whole prompts, so a prompt's
//    prefill is one forward pass and its first token comes as early as possible.
//  - No overtaking: the first prompt that does not fit ends admission (FCFS within a priority).
//  - A prompt longer than the whole token budget could never run whole, so when it is first in the
//    step it is cut to the budget; when nothing runs, the first prompt may also be cut to the memory
//    that is free. Either way a step never comes back empty while something fits.
//  - One free block per running sequence stays in reserve when admitting (vLLM's watermark), so the
//    running decodes can grow without being preempted by what was just admitted.
//  - Otherwise the step decodes every running sequence, and continues any prompt that was cut.
// Running decodes wait during every prefill step: these are the generation stalls SARATHI removes.
#pragma once

#include <algorithm>
#include <span>
#include <vector>

#include "chunkwise/sched/step_plan.hpp"

namespace chunkwise {

class PrefillFirstBatching {
 public:
  StepPlan plan(const SchedulerView& view) const {
    const int running = static_cast<int>(view.running.size());
    Step prefill = start(view);
    // Prompts cut in earlier steps are prefills too: they continue first (they arrived first).
    for (const SequenceView& s : view.running)
      if (!s.is_decode()) prefill.add(s, s.uncomputed(), 0);
    int admitted = 0;
    for (const SequenceView* w : by_priority(view.waiting)) {
      int n = w->uncomputed();
      if (n > prefill.tokens) {
        if (!prefill.plan.empty()) break;
        n = prefill.tokens;  // longer than the whole budget: cut, since it is first in the step
      }
      const int reserve = running + admitted;
      if (n <= 0 || prefill.seqs <= 0) break;
      if (view.blocks_needed(*w, n) > prefill.blocks - reserve) {
        if (!prefill.plan.empty() || running > 0) break;  // wait for memory, as vLLM does
        n = prefill.room(*w, n, reserve);                 // nothing runs: cut to the memory that is free
        if (n <= 0) break;
      }
      prefill.take(*w, n);
      ++admitted;
    }
    if (admitted > 0) return std::move(prefill.plan);

    Step decode = start(view);
    for (const SequenceView& s : view.running)
      if (s.is_decode()) decode.add(s, 1, 0);
    for (const SequenceView& s : view.running)
      if (!s.is_decode()) decode.add(s, s.uncomputed(), 0);
    return std::move(decode.plan);
  }

 private:
  // What is left of the step's budgets, and the plan so far.
  struct Step {
    const SchedulerView& view;
    int tokens;
    int seqs;
    int blocks;
    StepPlan plan;

    // Tokens of s (at most want) that fit what is left, keeping `reserve` blocks free.
    [[nodiscard]] int room(const SequenceView& s, int want, int reserve) const {
      if (seqs <= 0 || tokens <= 0 || blocks - reserve < 0) return 0;
      const long long bs = view.budgets.block_size;
      const long long have = (s.computed + bs - 1) / bs;
      const long long by_memory = (have + blocks - reserve) * bs - s.computed;
      const long long n = std::min({static_cast<long long>(want), static_cast<long long>(tokens),
                                    static_cast<long long>(s.uncomputed()), by_memory});
      return static_cast<int>(std::max(n, 0LL));
    }
    void take(const SequenceView& s, int n) {
      blocks -= view.blocks_needed(s, n);
      tokens -= n;
      --seqs;
      plan.chunks.push_back({s.id, n});
    }
    int add(const SequenceView& s, int want, int reserve) {
      const int n = room(s, want, reserve);
      if (n > 0) take(s, n);
      return n;
    }
  };

  static Step start(const SchedulerView& view) {
    return Step{
        view, view.budgets.max_batch_tokens, view.budgets.max_sequences, view.budgets.free_blocks, {}};
  }

  // Waiting requests with work left, higher priority first, then earlier arrival.
  static std::vector<const SequenceView*> by_priority(std::span<const SequenceView> queue) {
    std::vector<const SequenceView*> out;
    for (const SequenceView& s : queue)
      if (s.uncomputed() > 0) out.push_back(&s);
    std::stable_sort(out.begin(), out.end(), [](const SequenceView* a, const SequenceView* b) {
      if (a->priority != b->priority) return a->priority > b->priority;
      return a->submitted_s < b->submitted_s;
    });
    return out;
  }
};

}  // namespace chunkwise
