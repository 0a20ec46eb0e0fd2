// What every batching policy does while it fills one step: track what is left of the step's
// budgets (tokens, sequences, free KV blocks), size a request's chunk to fit, and build the plan.
#pragma once

#include <algorithm>
#include <span>
#include <vector>

#include "chunkwise/sched/step_plan.hpp"

namespace chunkwise::detail {

// Where a prompt cut short may end. Ending on a KV-block boundary (SARATHI) keeps partial blocks
// out of the middle of a prompt, so every block but the last one can be indexed and shared.
enum class ChunkEnd { kAnywhere, kBlockBoundary };

class StepBudget {
 public:
  StepBudget(const SchedulerView& view, int token_budget, ChunkEnd chunk_end)
      : view_(view),
        tokens_(std::min(token_budget, view.budgets.max_batch_tokens)),
        seqs_(view.budgets.max_sequences),
        blocks_(view.budgets.free_blocks),
        chunk_end_(chunk_end) {}

  [[nodiscard]] int tokens() const { return tokens_; }
  [[nodiscard]] int seqs() const { return seqs_; }
  [[nodiscard]] bool empty() const { return plan_.empty(); }

  // Tokens of s (at most want) that fit what is left, keeping `reserve` blocks free.
  [[nodiscard]] int room(const SequenceView& s, int want, int reserve) const {
    if (seqs_ <= 0 || tokens_ <= 0 || blocks_ - reserve < 0) return 0;
    const long long bs = view_.budgets.block_size;
    const long long have = (s.computed + bs - 1) / bs;
    const long long by_memory = (have + blocks_ - reserve - s.prefix_blocks_taken) * bs - s.computed;
    long long n = std::min({static_cast<long long>(want), static_cast<long long>(tokens_),
                            static_cast<long long>(s.uncomputed()), by_memory});
    if (chunk_end_ == ChunkEnd::kBlockBoundary && n > 0 && n < s.uncomputed()) {
      const long long aligned = (s.computed + n) / bs * bs - s.computed;
      if (aligned > 0) n = aligned;
    }
    return static_cast<int>(std::max(n, 0LL));
  }

  // n more tokens of s fit the free blocks, keeping `reserve` of them free.
  [[nodiscard]] bool fits(const SequenceView& s, int n, int reserve) const {
    return view_.blocks_needed(s, n) <= blocks_ - reserve;
  }
  // s fits whole in what is left, keeping `reserve` blocks free.
  [[nodiscard]] bool fits_whole(const SequenceView& s, int reserve) const {
    return seqs_ > 0 && s.uncomputed() <= tokens_ && fits(s, s.uncomputed(), reserve);
  }

  void take(const SequenceView& s, int n) {
    blocks_ -= view_.blocks_needed(s, n);
    tokens_ -= n;
    --seqs_;
    plan_.chunks.push_back({s.id, n});
  }

  // Takes as many tokens of s as fit (at most want); returns how many.
  int add(const SequenceView& s, int want, int reserve) {
    const int n = room(s, want, reserve);
    if (n > 0) take(s, n);
    return n;
  }

  [[nodiscard]] StepPlan finish() && { return std::move(plan_); }

 private:
  const SchedulerView& view_;
  int tokens_;
  int seqs_;
  int blocks_;
  ChunkEnd chunk_end_;
  StepPlan plan_;
};

// Requests of a queue with work left, higher priority first, then earlier arrival.
inline std::vector<const SequenceView*> by_priority(std::span<const SequenceView> queue) {
  std::vector<const SequenceView*> out;
  for (const SequenceView& s : queue)
    if (s.uncomputed() > 0) out.push_back(&s);
  std::stable_sort(out.begin(), out.end(), [](const SequenceView* a, const SequenceView* b) {
    if (a->priority != b->priority) return a->priority > b->priority;
    return a->submitted_s < b->submitted_s;
  });
  return out;
}

}  // namespace chunkwise::detail
