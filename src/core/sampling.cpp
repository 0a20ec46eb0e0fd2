// Greedy and temperature / top-k / top-p sampling with a counter-based RNG.
#include "chunkwise/core/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "chunkwise/core/detail/counter_rng.hpp"
#include "chunkwise/core/error.hpp"

namespace chunkwise {
namespace {

// NaN never wins (every comparison with it is false); ties go to the lowest index.
TokenId argmax(const float* logits, int vocab) {
  int best = 0;
  float best_value = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < vocab; ++i) {
    if (logits[i] > best_value) {
      best = i;
      best_value = logits[i];
    }
  }
  return best;
}

struct Candidate {
  float logit;
  TokenId id;
  double weight;  // exp((logit - max) / temperature), unnormalised; set once the kept set is known
};

// Higher logit first; equal logits by lower id, so truncation is deterministic.
bool before(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

}  // namespace

void validate(const SamplingParams& params) {
  if (!(std::isfinite(params.temperature) && params.temperature >= 0.0f)) {
    throw Error(ErrorCode::kInvalidArgument,
                "sampling: temperature must be finite and >= 0, got " + std::to_string(params.temperature));
  }
  if (params.top_k < 0) {
    throw Error(ErrorCode::kInvalidArgument,
                "sampling: top_k must be >= 0, got " + std::to_string(params.top_k));
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {
    throw Error(ErrorCode::kInvalidArgument,
                "sampling: top_p must be in (0, 1], got " + std::to_string(params.top_p));
  }
}

TokenId sample(const float* logits, int vocab, const SamplingParams& params, std::uint64_t step) {
  validate(params);
  if (vocab <= 0) {
    throw Error(ErrorCode::kInvalidArgument, "sampling: vocab must be > 0, got " + std::to_string(vocab));
  }
  if (params.temperature == 0.0f || params.top_k == 1) return argmax(logits, vocab);

  // Candidates in vocabulary order; NaN and -inf logits have zero probability.
  float max_logit = -std::numeric_limits<float>::infinity();
  int n_cand = 0;
  for (int i = 0; i < vocab; ++i) {
    max_logit = logits[i] > max_logit ? logits[i] : max_logit;
    n_cand += logits[i] > -std::numeric_limits<float>::infinity() ? 1 : 0;
  }
  std::vector<Candidate> cand(static_cast<std::size_t>(n_cand));
  for (int i = 0, n = 0; i < vocab; ++i) {
    if (logits[i] > -std::numeric_limits<float>::infinity())
      cand[static_cast<std::size_t>(n++)] = {logits[i], i, 0.0};
  }
  // Nothing finite to normalise: fall back to the argmax (which handles +inf and all-NaN).
  if (cand.empty() || max_logit == std::numeric_limits<float>::infinity()) return argmax(logits, vocab);
  const float inv_t = 1.0f / params.temperature;
  auto weigh = [&](std::span<Candidate> cs) {
    for (Candidate& c : cs) c.weight = std::exp((c.logit - max_logit) * inv_t);
  };

  // The kept set is the prefix cand[0, kept). Truncation reorders it (descending, `before`).
  std::size_t kept = cand.size();
  bool id_order = true;
  if (params.top_k > 0 && static_cast<std::size_t>(params.top_k) < cand.size()) {
    // Heap selection: one cheap comparison for most of the vocabulary.
    kept = static_cast<std::size_t>(params.top_k);
    std::partial_sort(cand.begin(), cand.begin() + static_cast<std::ptrdiff_t>(kept), cand.end(), before);
    id_order = false;
  }
  const std::span<Candidate> head(cand.data(), kept);
  weigh(head);
  if (params.top_p < 1.0f) {
    double total = 0.0;
    for (const Candidate& c : head) total += c.weight;
    const double target = static_cast<double>(params.top_p) * total;
    // The nucleus is the shortest head of the descending order holding top_p of the mass (at least
    // one token). After top-k the head is sorted already; otherwise sort only as much of it as
    // needed, in growing segments.
    std::size_t sorted = id_order ? 0 : kept;
    std::size_t n = 0;
    double cum = 0.0;
    for (;;) {
      const std::size_t next = std::min(kept, std::max<std::size_t>(256, sorted * 4));
      if (sorted < next) {
        const auto first = head.begin() + static_cast<std::ptrdiff_t>(sorted);
        const auto last = head.begin() + static_cast<std::ptrdiff_t>(next);
        if (next < kept) std::nth_element(first, last, head.end(), before);
        std::sort(first, last, before);
        sorted = next;
      }
      while (n < sorted && cum < target) cum += head[n++].weight;
      if (cum >= target || sorted == kept) break;
    }
    kept = std::max<std::size_t>(n, 1);
    id_order = false;
  }

  // Invert the CDF of the kept candidates in vocabulary order, so the token for a given u is a
  // plain function of (logits, params) and not of how the selection above ordered them.
  const std::span<Candidate> pick(cand.data(), kept);
  if (!id_order)
    std::sort(pick.begin(), pick.end(), [](const Candidate& a, const Candidate& b) { return a.id < b.id; });
  double mass = 0.0;
  for (const Candidate& c : pick) mass += c.weight;
  const double u = detail::sample_uniform(params.seed, step) * mass;
  double cum = 0.0;
  for (const Candidate& c : pick) {
    cum += c.weight;
    if (u < cum) return c.id;
  }
  // Rounding can leave u at the very top of the range; the last kept candidate owns it.
  return pick.back().id;
}

}  // namespace chunkwise
