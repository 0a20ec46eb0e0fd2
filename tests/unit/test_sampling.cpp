// Sampler: greedy, determinism in (seed, step), truncation, and the drawn distribution.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/core/sampling.hpp"

namespace {

using chunkwise::ErrorCode;
using chunkwise::SamplingParams;
using chunkwise::TokenId;

std::vector<double> softmax(const std::vector<float>& logits, double temperature) {
  double mx = -1e300;
  for (const float l : logits) mx = std::max(mx, static_cast<double>(l));
  std::vector<double> p;
  double sum = 0.0;
  for (const float l : logits) sum += p.emplace_back(std::exp((l - mx) / temperature));
  for (double& x : p) x /= sum;
  return p;
}

std::vector<int> histogram(const std::vector<float>& logits, const SamplingParams& params, int draws) {
  std::vector<int> counts(logits.size(), 0);
  for (int step = 0; step < draws; ++step) {
    const TokenId t = chunkwise::sample(logits.data(), static_cast<int>(logits.size()), params,
                                        static_cast<std::uint64_t>(step));
    REQUIRE(t >= 0);
    REQUIRE(t < static_cast<TokenId>(logits.size()));
    ++counts[static_cast<std::size_t>(t)];
  }
  return counts;
}

// Pearson chi-square of observed counts against expected probabilities (cells with p = 0 must be empty).
double chi_square(const std::vector<int>& counts, const std::vector<double>& p, int draws) {
  double chi2 = 0.0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    if (p[i] == 0.0) {
      if (counts[i] != 0) return std::numeric_limits<double>::infinity();
      continue;
    }
    const double expected = p[i] * draws;
    chi2 += (counts[i] - expected) * (counts[i] - expected) / expected;
  }
  return chi2;
}

ErrorCode validate_code(const SamplingParams& p) {
  try {
    chunkwise::validate(p);
  } catch (const chunkwise::Error& e) {
    return e.code();
  }
  return ErrorCode::kBackend;  // "no error"
}

}  // namespace

TEST_CASE("greedy picks the argmax, lowest index on ties", "[sampling]") {
  const std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f};
  SamplingParams greedy;
  for (std::uint64_t step = 0; step < 5; ++step)
    CHECK(chunkwise::sample(logits.data(), 5, greedy, step) == 1);
  const std::vector<float> with_nan = {std::numeric_limits<float>::quiet_NaN(), -2.0f, -1.0f};
  CHECK(chunkwise::sample(with_nan.data(), 3, greedy, 0) == 2);
}

TEST_CASE("the draw depends only on (seed, step)", "[sampling]") {
  std::mt19937 rng(11);
  std::normal_distribution<float> dist(0.0f, 2.0f);
  std::vector<float> logits(1000);
  for (float& l : logits) l = dist(rng);
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 1234;
  for (std::uint64_t step = 0; step < 50; ++step) {
    const TokenId a = chunkwise::sample(logits.data(), 1000, p, step);
    // Unrelated calls in between (another request's draws) change nothing.
    SamplingParams other = p;
    other.seed = 99;
    (void)chunkwise::sample(logits.data(), 1000, other, step + 7);
    CHECK(chunkwise::sample(logits.data(), 1000, p, step) == a);
  }
}

TEST_CASE("different seeds give different draws from the same distribution", "[sampling]") {
  const std::vector<float> logits = {1.0f, 0.2f, -0.5f, 2.0f, 0.0f, 1.5f};
  const float temperature = 0.8f;
  const int draws = 20000;
  const auto p = softmax(logits, temperature);
  SamplingParams a;
  a.temperature = temperature;
  a.seed = 1;
  SamplingParams b = a;
  b.seed = 2;
  int same = 0;
  for (std::uint64_t step = 0; step < 200; ++step) {
    same += chunkwise::sample(logits.data(), 6, a, step) == chunkwise::sample(logits.data(), 6, b, step);
  }
  // Independent draws agree with probability sum p_i^2 (about 0.3 here), far from always.
  CHECK(same < 120);
  // 5 degrees of freedom: P(chi2 > 25) is about 1.4e-4.
  CHECK(chi_square(histogram(logits, a, draws), p, draws) < 25.0);
  CHECK(chi_square(histogram(logits, b, draws), p, draws) < 25.0);
}

TEST_CASE("temperature draws follow softmax(logits / T)", "[sampling]") {
  const std::vector<float> logits = {0.3f, -1.2f, 2.1f, 0.0f, 1.1f, -0.4f, 0.9f, 1.8f};
  const int draws = 40000;
  for (const float t : {0.5f, 1.0f, 2.0f}) {
    SamplingParams p;
    p.temperature = t;
    p.seed = 42;
    INFO("temperature=" << t);
    // 7 degrees of freedom: P(chi2 > 30) is about 1e-4.
    CHECK(chi_square(histogram(logits, p, draws), softmax(logits, t), draws) < 30.0);
  }
}

TEST_CASE("top-k and top-p truncate then renormalise", "[sampling]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::vector<float> logits(5000);
  for (float& l : logits) l = dist(rng);
  const TokenId best = chunkwise::sample(logits.data(), 5000, SamplingParams{}, 0);

  SECTION("top_k = 1 and a tiny top_p equal greedy") {
    for (std::uint64_t step = 0; step < 100; ++step) {
      SamplingParams k1{1.5f, 1, 1.0f, step * 31};
      SamplingParams p0{1.5f, 0, 1e-6f, step * 17};
      SamplingParams both{0.7f, 50, 1e-6f, step};
      CHECK(chunkwise::sample(logits.data(), 5000, k1, step) == best);
      CHECK(chunkwise::sample(logits.data(), 5000, p0, step) == best);
      CHECK(chunkwise::sample(logits.data(), 5000, both, step) == best);
    }
  }
  SECTION("top_k keeps exactly the k most likely, in proportion") {
    const std::vector<float> l = {0.1f, 2.0f, 1.0f, 3.0f, -1.0f, 0.5f};
    SamplingParams p{1.0f, 3, 1.0f, 7};
    const int draws = 20000;
    std::vector<float> kept = l;
    for (float& x : kept) {
      if (x < 1.0f) x = -std::numeric_limits<float>::infinity();
    }
    CHECK(chi_square(histogram(l, p, draws), softmax(kept, 1.0), draws) < 25.0);
  }
  SECTION("top_p keeps the smallest head reaching p") {
    // Probabilities 0.5, 0.3, 0.15, 0.05 (as logs): cumulative 0.5 < 0.7 <= 0.8, so {0, 1} remain.
    const std::vector<float> l = {std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
    SamplingParams p{1.0f, 0, 0.7f, 3};
    const int draws = 20000;
    CHECK(chi_square(histogram(l, p, draws), {0.625, 0.375, 0.0, 0.0}, draws) < 20.0);
    // With top_p = 0.5 exactly the first token already reaches it.
    p.top_p = 0.5f;
    CHECK(chi_square(histogram(l, p, 2000), {1.0, 0.0, 0.0, 0.0}, 2000) < 1.0);
  }
  SECTION("a large vocabulary nucleus") {
    // Flat distribution over 4096 tokens: top_p 0.9 keeps about 3687 of them (the prefix sort grows).
    std::vector<float> flat(4096, 0.0f);
    SamplingParams p{1.0f, 0, 0.9f, 5};
    std::vector<int> counts = histogram(flat, p, 5000);
    int beyond = 0;
    for (std::size_t i = 3687; i < counts.size(); ++i) beyond += counts[i];
    // Ties are broken by lower id, so the nucleus is ids [0, 3687).
    CHECK(beyond == 0);
    CHECK(counts[3686] + counts[3685] + counts[0] > 0);
  }
}

TEST_CASE("invalid sampling parameters throw", "[sampling]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(validate_code({-0.1f, 0, 1.0f, 0}) == ErrorCode::kInvalidArgument);
  CHECK(validate_code({nan, 0, 1.0f, 0}) == ErrorCode::kInvalidArgument);
  CHECK(validate_code({inf, 0, 1.0f, 0}) == ErrorCode::kInvalidArgument);
  CHECK(validate_code({1.0f, -1, 1.0f, 0}) == ErrorCode::kInvalidArgument);
  CHECK(validate_code({1.0f, 0, 0.0f, 0}) == ErrorCode::kInvalidArgument);
  CHECK(validate_code({1.0f, 0, 1.5f, 0}) == ErrorCode::kInvalidArgument);
  CHECK(validate_code({1.0f, 0, nan, 0}) == ErrorCode::kInvalidArgument);
  CHECK(validate_code({0.0f, 0, 1.0f, 0}) == ErrorCode::kBackend);  // valid: no error
  CHECK(validate_code({0.7f, 40, 0.95f, 9}) == ErrorCode::kBackend);

  const std::vector<float> logits = {1.0f, 2.0f};
  REQUIRE_THROWS_AS(chunkwise::sample(logits.data(), 2, SamplingParams{-1.0f, 0, 1.0f, 0}, 0),
                    chunkwise::Error);
  REQUIRE_THROWS_AS(chunkwise::sample(logits.data(), 0, SamplingParams{}, 0), chunkwise::Error);
  try {
    chunkwise::validate(SamplingParams{1.0f, 0, 2.0f, 0});
  } catch (const chunkwise::Error& e) {
    CHECK(std::string(e.what()).find("top_p") != std::string::npos);
  }
}
