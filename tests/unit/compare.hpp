// Comparisons shared by the unit tests of the CPU ops.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "catch.hpp"
#include "chunkwise/core/error.hpp"

namespace chunkwise::test {

// Largest |a[i] - b[i]|; a NaN anywhere makes it infinite (it must fail, not vanish in std::max).
template <class A, class B>
double max_abs_diff(const std::vector<A>& a, const std::vector<B>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (!(d <= worst)) worst = std::isnan(d) ? std::numeric_limits<double>::infinity() : d;
  }
  return worst;
}

// The code of the chunkwise::Error f throws; a test failure when it throws none.
template <class F>
ErrorCode error_code_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  FAIL("expected chunkwise::Error");
  return ErrorCode::kBackend;
}

}  // namespace chunkwise::test
