// Thread control and the linear layer y = x * w^T.

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <string>

#include "../../detail/eigen_core.hpp"  // first: see there
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"
#include "ops_detail.hpp"

namespace chunkwise::cpu {
namespace {

// 0 = not set: use every core. A global rather than omp_set_num_threads alone, because the OpenMP
// setting is per calling thread and ops may run on another thread than the one that configured them.
std::atomic<int> g_threads{0};

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstRowMap = Eigen::Map<const RowMatrix>;
using RowBlockMap = Eigen::Map<RowMatrix, Eigen::Unaligned, Eigen::OuterStride<>>;

}  // namespace

void set_num_threads(int n) {
  if (n < 0) {
    throw Error(ErrorCode::kInvalidArgument, "set_num_threads: n must be >= 0, got " + std::to_string(n));
  }
  const int resolved = n == 0 ? omp_get_num_procs() : n;
  g_threads.store(n, std::memory_order_relaxed);
  Eigen::setNbThreads(resolved);
  omp_set_num_threads(resolved);
}

int num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n == 0 ? omp_get_num_procs() : n;
}

namespace detail {

int threads_for(std::int64_t work) {
  // ~32K multiply-adds take a few microseconds, about what a fork/join of the team costs.
  constexpr std::int64_t kMinWorkPerThread = 32 * 1024;
  const std::int64_t useful = std::max<std::int64_t>(1, work / kMinWorkPerThread);
  return static_cast<int>(std::min<std::int64_t>(num_threads(), useful));
}

}  // namespace detail

void matmul_nt(const float* x, std::int64_t m, std::int64_t k, const float* w, std::int64_t n, float* y) {
  check(m >= 0 && k >= 0 && n >= 0, ErrorCode::kInvalidArgument, "matmul_nt: negative dimension");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    std::fill(y, y + m * n, 0.0f);
    return;
  }
  const int threads = detail::threads_for(m * n * k);
  // Rows [n0, n1) of w give columns [n0, n1) of y, computed by one sequential Eigen product. For
  // m == 1 that is a row-major GEMV (one dot product per weight row, streaming w once), which Eigen
  // would not parallelise itself.
  auto columns = [&](std::int64_t n0, std::int64_t n1) {
    const ConstRowMap xs(x, m, k);
    const ConstRowMap ws(w + n0 * k, n1 - n0, k);
    RowBlockMap ys(y + n0, m, n1 - n0, Eigen::OuterStride<>(n));
    if (m == 1) {
      ys.row(0).transpose().noalias() = ws * xs.row(0).transpose();
    } else {
      ys.noalias() = xs * ws.transpose();
    }
  };
  if (threads <= 1) {
    columns(0, n);
    return;
  }
  // Split the output columns (= weight rows) evenly, in multiples of 16: every weight row is read
  // by one thread only, and for m > 1 this measured at least as fast as Eigen's own OpenMP GEMM
  // (which also parallelises inside, but shares packed blocks through barriers).
  const std::int64_t per_thread = ((n + threads - 1) / threads + 15) / 16 * 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int t = 0; t < threads; ++t) {
    const std::int64_t n0 = std::min<std::int64_t>(n, t * per_thread);
    const std::int64_t n1 = std::min<std::int64_t>(n, n0 + per_thread);
    if (n0 < n1) columns(n0, n1);
  }
}

}  // namespace chunkwise::cpu
