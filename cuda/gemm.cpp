#include "chunkwise/cuda/gemm.hpp"

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>

namespace chunkwise::cuda {

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorCode::kBackend, std::string(what) + ": " + cublasGetStatusName(status) + ": " +
                                         cublasGetStatusString(status));
}

namespace {

// cuBLAS's recommended workspace on Hopper.
constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;
// Shapes differ mostly in m (the step's rows); past this many the cache starts over.
constexpr std::size_t kMaxPlans = 4096;

// The largest power of two up to 256 that divides the address: the heuristic may pick kernels that
// need that alignment, so it is part of a plan's key.
std::uint32_t alignment(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t al = 256;
  while (al > 1 && a % al != 0) al /= 2;
  return al;
}

// One shape's descriptors and algorithm.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// (type, m, n, k, alignment of w, x, y)
using PlanKey =
    std::tuple<int, std::int64_t, std::int64_t, std::int64_t, std::uint32_t, std::uint32_t, std::uint32_t>;

}  // namespace

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  DeviceBuffer<std::byte> workspace;
  std::map<PlanKey, Plan> plans;

  const Plan& plan(cudaDataType_t type, std::int64_t m, std::int64_t n, std::int64_t k, const void* w,
                   const void* x, const float* y) {
    const std::uint32_t aw = alignment(w), ax = alignment(x), ay = alignment(y);
    const PlanKey key{static_cast<int>(type), m, n, k, aw, ax, ay};
    if (auto it = plans.find(key); it != plans.end()) return it->second;
    if (plans.size() >= kMaxPlans) plans.clear();
    Plan& p = plans[key];
    try {
      // Row-major y[m, n] is column-major yᵀ[n, m] = w[n, k] · xᵀ[k, m]; row-major w[n, k] is
      // column-major wᵀ [k, n], hence OP_T on it.
      check_cublas(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                   "cublasLtMatmulDescCreate");
      const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
      check_cublas(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t),
                   "cublasLtMatmulDescSetAttribute");
      check_cublas(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n),
                   "cublasLtMatmulDescSetAttribute");
      const auto u = [](std::int64_t v) { return static_cast<std::uint64_t>(v); };
      check_cublas(cublasLtMatrixLayoutCreate(&p.a, type, u(k), u(n), k), "cublasLtMatrixLayoutCreate");
      check_cublas(cublasLtMatrixLayoutCreate(&p.b, type, u(k), u(m), k), "cublasLtMatrixLayoutCreate");
      check_cublas(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32F, u(n), u(m), n), "cublasLtMatrixLayoutCreate");

      cublasLtMatmulPreference_t pref = nullptr;
      check_cublas(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
      const std::size_t ws = kWorkspaceBytes;
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aw, sizeof aw);
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ax, sizeof ax);
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ay, sizeof ay);
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ay, sizeof ay);
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      const cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found);
      cublasLtMatmulPreferenceDestroy(pref);
      check_cublas(st, "cublasLtMatmulAlgoGetHeuristic");
      if (found == 0)
        throw Error(ErrorCode::kBackend, "cuBLASLt has no algorithm for a " + std::to_string(m) + "x" +
                                             std::to_string(n) + "x" + std::to_string(k) + " product");
      p.algo = result.algo;
    } catch (...) {
      plans.erase(key);
      throw;
    }
    return p;
  }
};

Gemm::Gemm() : impl_(std::make_unique<Impl>()) {
  check_cublas(cublasLtCreate(&impl_->handle), "cublasLtCreate");
  impl_->workspace = DeviceBuffer<std::byte>(kWorkspaceBytes);
}

Gemm::~Gemm() {
  if (impl_ && impl_->handle) {
    impl_->plans.clear();
    cublasLtDestroy(impl_->handle);
  }
}

std::size_t Gemm::plans() const {
  return impl_->plans.size();
}

template <class T>
void Gemm::linear(const T* x, std::int64_t m, std::int64_t k, const T* w, std::int64_t n, float* y,
                  float beta, cudaStream_t stream) {
  if (m == 0) return;
  constexpr std::int64_t kMax = std::numeric_limits<int>::max();
  check(m > 0 && n > 0 && k > 0 && m <= kMax && n <= kMax && k <= kMax, ErrorCode::kInvalidArgument,
        "GEMM dimensions must be in [1, INT_MAX]");
  const cudaDataType_t type = std::is_same_v<T, bf16> ? CUDA_R_16BF : CUDA_R_16F;
  const Plan& p = impl_->plan(type, m, n, k, w, x, y);
  const float alpha = 1.0f;
  check_cublas(cublasLtMatmul(impl_->handle, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo,
                              impl_->workspace.get(), kWorkspaceBytes, stream),
               "cublasLtMatmul");
}

template void Gemm::linear(const bf16*, std::int64_t, std::int64_t, const bf16*, std::int64_t, float*, float,
                           cudaStream_t);
template void Gemm::linear(const f16*, std::int64_t, std::int64_t, const f16*, std::int64_t, float*, float,
                           cudaStream_t);

}  // namespace chunkwise::cuda
