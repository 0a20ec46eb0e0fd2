// Prefix-grouped batching for offline batches, after BatchLLM (arXiv 2412.03594).
//  - Groups: requests (waiting, and running for membership) whose prompts agree on their first
//    min_shared_tokens tokens form one group; the group's shared prefix is the common prefix of all
//    its members. This is a one-level flattening of the prefix tree, as BatchLLM's MaximizeReuse
//    makes, found by sorting on the first min_shared_tokens tokens and grouping equal neighbours.
//  - Group order: groups with a running member first, so a prefix's KV lives only briefly; then
//    higher priority (of any member); then decode ratio (mean max_new_tokens / prompt_len),
//    decode-heavy first, so long generations start early and their decode tokens fill later steps
//    that would otherwise be prefill-only. Within a group: priority, then decode-heavy first.
//  - Siblings follow their leader: while a group's shared prefix (whole KV blocks of it) is not
//    computed by any member, only one member of the group is admitted; the others wait until it is,
//    and then hit the cached prefix instead of computing it again. Other groups are not held up.
//  - Memory-centric admission, in place of fixed request caps: a request is admitted while the
//    projected KV growth of all running and admitted requests fits the free blocks. A request's
//    growth is ceil((prompt_len + max_new_tokens) / block_size) blocks minus what it holds or finds
//    cached; a sibling admitted after a member of its group counts the shared prefix as held, so a
//    group's prefix counts once. Admission stops at the first request that does not fit (except
//    that with nothing running the first one is admitted anyway, so the batch always progresses).
//  - Each step: running decodes first, then ongoing prefills, then new requests, within
//    C = min(token_budget, max_batch_tokens) tokens and max_sequences; a prompt may be cut to what
//    is left of the tokens, so decodes mix with prefill chunks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/batching/detail/step_budget.hpp"

namespace chunkwise {

class PrefixGroupedBatching {
 public:
  explicit PrefixGroupedBatching(int token_budget = 4096, int min_shared_tokens = 32)
      : token_budget_(token_budget), min_shared_tokens_(min_shared_tokens) {
    check(token_budget >= 1, ErrorCode::kInvalidArgument,
          "prefix-grouped batching: token_budget must be >= 1");
    check(min_shared_tokens >= 1, ErrorCode::kInvalidArgument,
          "prefix-grouped batching: min_shared_tokens must be >= 1");
  }

  [[nodiscard]] int token_budget() const { return token_budget_; }
  [[nodiscard]] int min_shared_tokens() const { return min_shared_tokens_; }

  // A group of requests sharing a prefix, as plan() orders them.
  struct Group {
    std::vector<const SequenceView*> waiting;  // admission order
    int shared = 0;                            // tokens every member's prompt starts with (0 alone)
    bool started = false;                      // a member is running
    bool ready = false;                        // the shared prefix's whole blocks are computed somewhere
    int priority = 0;                          // highest of the members
    double decode_ratio = 0;                   // mean max_new_tokens / prompt_len
    double submitted_s = 0;                    // earliest member
    std::size_t first = 0;                     // earliest member's position (running, then waiting)
  };

  // The groups with waiting members, in admission order.
  [[nodiscard]] std::vector<Group> groups(const SchedulerView& view) const {
    struct Item {
      const SequenceView* s;
      bool running;
      std::size_t pos;
    };
    std::vector<Item> items;
    for (const SequenceView& s : view.running) items.push_back({&s, true, items.size()});
    for (const SequenceView& s : view.waiting) items.push_back({&s, false, items.size()});
    const auto m = static_cast<std::size_t>(min_shared_tokens_);
    // Prompts of at least m tokens sort by their first m tokens; shorter ones stay alone, at the end.
    std::stable_sort(items.begin(), items.end(), [m](const Item& a, const Item& b) {
      const auto pa = prompt(*a.s), pb = prompt(*b.s);
      const bool ka = pa.size() >= m, kb = pb.size() >= m;
      if (ka != kb) return ka;
      if (!ka) return false;
      return std::lexicographical_compare(pa.begin(), pa.begin() + static_cast<std::ptrdiff_t>(m), pb.begin(),
                                          pb.begin() + static_cast<std::ptrdiff_t>(m));
    });
    const int bs = view.budgets.block_size;
    std::vector<Group> out;
    for (std::size_t i = 0; i < items.size();) {
      const auto p0 = prompt(*items[i].s);
      std::size_t j = i + 1;
      if (p0.size() >= m)
        while (
            j < items.size() && prompt(*items[j].s).size() >= m &&
            std::equal(p0.begin(), p0.begin() + static_cast<std::ptrdiff_t>(m), prompt(*items[j].s).begin()))
          ++j;
      Group g;
      g.shared = j - i > 1 ? static_cast<int>(p0.size()) : 0;
      g.priority = items[i].s->priority;
      g.submitted_s = items[i].s->submitted_s;
      g.first = items[i].pos;
      for (std::size_t k = i; k < j; ++k) {
        const SequenceView& s = *items[k].s;
        if (k > i) g.shared = std::min(g.shared, common_prefix(p0, prompt(s)));
        g.started = g.started || items[k].running;
        g.priority = std::max(g.priority, s.priority);
        g.decode_ratio += ratio(s) / static_cast<double>(j - i);
        g.submitted_s = std::min(g.submitted_s, s.submitted_s);
        g.first = std::min(g.first, items[k].pos);
        if (!items[k].running && s.uncomputed() > 0) g.waiting.push_back(&s);
      }
      const int shared_full = g.shared / bs * bs;
      g.ready = shared_full == 0;
      for (std::size_t k = i; k < j; ++k) g.ready = g.ready || items[k].s->computed >= shared_full;
      std::stable_sort(g.waiting.begin(), g.waiting.end(), [](const SequenceView* a, const SequenceView* b) {
        if (a->priority != b->priority) return a->priority > b->priority;
        if (ratio(*a) != ratio(*b)) return ratio(*a) > ratio(*b);
        return a->submitted_s < b->submitted_s;
      });
      if (!g.waiting.empty()) out.push_back(std::move(g));
      i = j;
    }
    std::sort(out.begin(), out.end(), [](const Group& a, const Group& b) {
      if (a.started != b.started) return a.started;
      if (a.priority != b.priority) return a.priority > b.priority;
      if (a.decode_ratio != b.decode_ratio) return a.decode_ratio > b.decode_ratio;
      if (a.submitted_s != b.submitted_s) return a.submitted_s < b.submitted_s;
      return a.first < b.first;
    });
    return out;
  }

  StepPlan plan(const SchedulerView& view) const {
    detail::StepBudget step(view, token_budget_, detail::ChunkEnd::kAnywhere);
    for (const SequenceView& s : view.running)
      if (s.is_decode()) step.add(s, 1, 0);
    for (const SequenceView& s : view.running)
      if (!s.is_decode()) step.add(s, s.uncomputed(), 0);
    // Grouping costs a sort of every prompt: skip it when nothing could be admitted anyway.
    if (view.waiting.empty() || step.tokens() <= 0 || step.seqs() <= 0) return std::move(step).finish();

    const long long bs = view.budgets.block_size;
    long long projected = 0;  // future KV growth of running and admitted requests, in blocks
    for (const SequenceView& s : view.running) projected += growth(s, held(s, bs), bs);
    bool admitted = false;
    for (const Group& g : groups(view)) {
      bool holder = g.started;  // a member holds (or is computing) the prefix
      for (const SequenceView* w : g.waiting) {
        if (holder && !g.ready) break;  // siblings wait for the leader's prefix
        long long have = held(*w, bs);
        if (holder) have = std::max(have, g.shared / bs);  // the prefix counts once per group
        const long long grow = growth(*w, have, bs);
        if (projected + grow > view.budgets.free_blocks && (admitted || !view.running.empty()))
          return std::move(step).finish();
        if (step.add(*w, w->uncomputed(), 0) == 0) return std::move(step).finish();
        projected += grow;
        admitted = true;
        holder = true;
      }
    }
    return std::move(step).finish();
  }

 private:
  static std::span<const TokenId> prompt(const SequenceView& s) {
    return s.tokens.first(std::min(s.tokens.size(), static_cast<std::size_t>(std::max(s.prompt_len, 0))));
  }
  static int common_prefix(std::span<const TokenId> a, std::span<const TokenId> b) {
    const auto end = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
    return static_cast<int>(end.first - a.begin());
  }
  static double ratio(const SequenceView& s) {
    return static_cast<double>(s.max_new_tokens) / static_cast<double>(std::max(s.prompt_len, 1));
  }
  // Blocks a sequence holds, or would find cached when admitted.
  static long long held(const SequenceView& s, long long bs) { return (s.computed + bs - 1) / bs; }
  // Blocks it still needs to reach its full length.
  static long long growth(const SequenceView& s, long long have, long long bs) {
    const long long final_len = std::max(s.total_len, s.prompt_len + s.max_new_tokens);
    return std::max(0LL, (final_len + bs - 1) / bs - have);
  }

  int token_budget_;
  int min_shared_tokens_;
};

}  // namespace chunkwise
