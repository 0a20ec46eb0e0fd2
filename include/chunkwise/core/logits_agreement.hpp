// How close two runs' next-token distributions are: argmax agreement and KL divergence per row of
// [rows, vocab] logits. What the GPU is checked against the CPU with, and approximate methods
// (sparse attention, chunk reuse) against the exact path.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace chunkwise {

struct LogitsAgreement {
  double top1 = 0;     // share of rows whose argmax agrees
  double mean_kl = 0;  // mean over rows of KL(p_ref || p_test)
  double max_kl = 0;
};

inline LogitsAgreement compare_logits(const std::vector<float>& ref, const std::vector<float>& test,
                                      int vocab) {
  const std::size_t rows = ref.size() / static_cast<std::size_t>(vocab);
  LogitsAgreement a;
  if (rows == 0) return a;
  std::size_t same = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const float* p = ref.data() + r * static_cast<std::size_t>(vocab);
    const float* q = test.data() + r * static_cast<std::size_t>(vocab);
    same += std::max_element(p, p + vocab) - p == std::max_element(q, q + vocab) - q ? 1 : 0;
    const double mp = *std::max_element(p, p + vocab), mq = *std::max_element(q, q + vocab);
    double zp = 0, zq = 0;
    for (int i = 0; i < vocab; ++i) zp += std::exp(p[i] - mp), zq += std::exp(q[i] - mq);
    double kl = 0;
    for (int i = 0; i < vocab; ++i) {
      const double lp = p[i] - mp - std::log(zp), lq = q[i] - mq - std::log(zq);
      kl += std::exp(lp) * (lp - lq);
    }
    a.mean_kl += kl / static_cast<double>(rows);
    a.max_kl = std::max(a.max_kl, kl);
  }
  a.top1 = static_cast<double>(same) / static_cast<double>(rows);
  return a;
}

}  // namespace chunkwise
