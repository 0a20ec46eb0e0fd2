// Greedy and temperature / top-k / top-p sampling with a counter-based RNG.
#include "chunkwise/core/sampling.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "chunkwise/core/error.hpp"

namespace chunkwise {
namespace {

constexpr std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// Uniform in [0, 1), a pure function of (seed, step): no generator state to carry between steps, so
// a request draws the same numbers whichever batch or process it runs in.
double uniform(std::uint64_t seed, std::uint64_t step) {
  const std::uint64_t bits = splitmix64(seed ^ splitmix64(step));
  return static_cast<double>(bits >> 11) * 0x1.0p-53;
}

// NaN never wins; ties go to the lowest index.
TokenId argmax(const float* logits, int vocab) {
  int best = 0;
  float best_value = -std::numeric_limits<float>::infinity();
  bool found = false;
  for (int i = 0; i < vocab; ++i) {
    const float v = logits[i];
    if (std::isnan(v)) continue;
    if (!found || v > best_value) {
      best = i;
      best_value = v;
      found = true;
    }
  }
  return best;
}

struct Candidate {
  float logit;
  TokenId id;
  double weight;  // exp((logit - max) / temperature), unnormalised
};

// Higher logit first; equal logits by lower id, so truncation is deterministic.
bool before(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

}  // namespace

void validate(const SamplingParams& params) {
  check(std::isfinite(params.temperature) && params.temperature >= 0.0f, ErrorCode::kInvalidArgument,
        "sampling: temperature must be finite and >= 0, got " + std::to_string(params.temperature));
  check(params.top_k >= 0, ErrorCode::kInvalidArgument,
        "sampling: top_k must be >= 0, got " + std::to_string(params.top_k));
  check(params.top_p > 0.0f && params.top_p <= 1.0f, ErrorCode::kInvalidArgument,
        "sampling: top_p must be in (0, 1], got " + std::to_string(params.top_p));
}

TokenId sample(const float* logits, int vocab, const SamplingParams& params, std::uint64_t step) {
  validate(params);
  check(vocab > 0, ErrorCode::kInvalidArgument, "sampling: vocab must be > 0, got " + std::to_string(vocab));
  if (params.temperature == 0.0f || params.top_k == 1) return argmax(logits, vocab);

  // Candidates in vocabulary order; NaN and -inf logits have zero probability.
  std::vector<Candidate> cand;
  cand.reserve(static_cast<std::size_t>(vocab));
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < vocab; ++i) {
    if (logits[i] > -std::numeric_limits<float>::infinity()) {
      cand.push_back({logits[i], i, 0.0});
      max_logit = std::max(max_logit, logits[i]);
    }
  }
  // Nothing finite to normalise: fall back to the argmax (which handles +inf and all-NaN).
  if (cand.empty() || max_logit == std::numeric_limits<float>::infinity()) return argmax(logits, vocab);
  // Softmax of logit / temperature in double, relative to the max so exp never overflows.
  const double inv_t = 1.0 / static_cast<double>(params.temperature);
  for (Candidate& c : cand) c.weight = std::exp((static_cast<double>(c.logit) - max_logit) * inv_t);

  // Truncation keeps every candidate ordered no later than `cutoff` in `before` order.
  bool truncated = false;
  Candidate cutoff{};
  std::vector<Candidate> order;
  if ((params.top_k > 0 && static_cast<std::size_t>(params.top_k) < cand.size()) || params.top_p < 1.0f) {
    order = cand;
  }
  if (params.top_k > 0 && static_cast<std::size_t>(params.top_k) < cand.size()) {
    const auto kth = order.begin() + (params.top_k - 1);
    std::nth_element(order.begin(), kth, order.end(), before);
    cutoff = *kth;
    order.resize(static_cast<std::size_t>(params.top_k));
    truncated = true;
  }
  if (params.top_p < 1.0f) {
    double total = 0.0;
    for (const Candidate& c : order) total += c.weight;
    const double target = static_cast<double>(params.top_p) * total;
    // The nucleus is the shortest head of the descending order holding top_p of the mass (at least
    // one token). Sort only as much of that order as needed, in growing segments: a peaked
    // distribution costs one selection over the vocabulary plus a sort of a few hundred entries.
    std::size_t sorted = 0;
    std::size_t n = 0;
    double cum = 0.0;
    for (;;) {
      const std::size_t next = std::min(order.size(), std::max<std::size_t>(256, sorted * 4));
      const auto first = order.begin() + static_cast<std::ptrdiff_t>(sorted);
      const auto last = order.begin() + static_cast<std::ptrdiff_t>(next);
      if (next < order.size()) std::nth_element(first, last, order.end(), before);
      std::sort(first, last, before);
      while (n < next && cum < target) cum += order[n++].weight;
      sorted = next;
      if (cum >= target || sorted == order.size()) break;
    }
    cutoff = order[std::max<std::size_t>(n, 1) - 1];
    truncated = true;
  }

  // Invert the CDF of the kept candidates in vocabulary order: no sort needed, and the token for a
  // given u is a plain function of (logits, params).
  auto kept = [&](const Candidate& c) { return !truncated || !before(cutoff, c); };
  double mass = 0.0;
  for (const Candidate& c : cand) {
    if (kept(c)) mass += c.weight;
  }
  const double u = uniform(params.seed, step) * mass;
  double cum = 0.0;
  TokenId last = cutoff.id;
  for (const Candidate& c : cand) {
    if (!kept(c)) continue;
    cum += c.weight;
    last = c.id;
    if (u < cum) return c.id;
  }
  // Rounding can leave u at the very top of the range; the last kept candidate owns it.
  return last;
}

}  // namespace chunkwise
