// Iteration-level continuous batching (Orca, OSDI 2022): every step runs all running decodes,
// then admits waiting prompts first-come first-served while the token and memory budgets last.
// A prompt longer than what is left of the token budget is split across steps. New requests are
// admitted only while one free block per running sequence stays in reserve, so that decodes can
// grow without preempting what was just admitted (vLLM keeps a similar watermark).
#pragma once

#include <algorithm>

#include "chunkwise/sched/step_plan.hpp"

namespace chunkwise {

struct ContinuousBatching {
  StepPlan plan(const SchedulerView& view) const {
    StepPlan plan;
    int tokens = view.budgets.max_batch_tokens;
    int blocks = view.budgets.free_blocks;
    int seqs = view.budgets.max_sequences;
    int admitted = 0;
    auto take = [&](const SequenceView& s, int reserve) {
      int n = std::min(s.uncomputed(), tokens);
      // Shrink the chunk until its blocks fit in what is left of memory.
      while (n > 0 && view.blocks_needed(s, n) > blocks - reserve) n = std::max(0, n - view.budgets.block_size);
      if (n <= 0 || seqs <= 0) return false;
      blocks -= view.blocks_needed(s, n);
      tokens -= n;
      --seqs;
      plan.chunks.push_back({s.id, n});
      return true;
    };
    for (const auto& s : view.running) take(s, 0);
    const int running = static_cast<int>(view.running.size());
    for (const auto& s : view.waiting) {
      if (!take(s, running + admitted)) break;  // FCFS: no overtaking of a prompt that does not fit
      ++admitted;
    }
    return plan;
  }
};

}  // namespace chunkwise
