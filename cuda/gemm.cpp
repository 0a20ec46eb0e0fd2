#include "chunkwise/cuda/gemm.hpp"

#include <limits>
#include <string>
#include <type_traits>

namespace chunkwise::cuda {

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorCode::kBackend, std::string(what) + ": " + cublasGetStatusName(status) + ": " +
                                         cublasGetStatusString(status));
}

Gemm::Gemm() { check_cublas(cublasCreate(&handle_), "cublasCreate"); }

Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
}

template <class T>
void Gemm::linear(const T* x, std::int64_t m, std::int64_t k, const T* w, std::int64_t n, float* y,
                  float beta, cudaStream_t stream) {
  if (m == 0) return;
  constexpr std::int64_t kMax = std::numeric_limits<int>::max();
  check(m <= kMax && n <= kMax && k <= kMax, ErrorCode::kInvalidArgument, "GEMM dimension past INT_MAX");
  check_cublas(cublasSetStream(handle_, stream), "cublasSetStream");
  const float alpha = 1.0f;
  const cudaDataType_t type = std::is_same_v<T, bf16> ? CUDA_R_16BF : CUDA_R_16F;
  // Row-major y[m, n] is column-major yᵀ[n, m] = w[n, k] · xᵀ[k, m]; row-major w[n, k] is
  // column-major wᵀ, hence OP_T on it.
  check_cublas(
      cublasGemmEx(handle_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                   static_cast<int>(k), &alpha, w, type, static_cast<int>(k), x, type, static_cast<int>(k),
                   &beta, y, CUDA_R_32F, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
      "cublasGemmEx");
}

template void Gemm::linear(const bf16*, std::int64_t, std::int64_t, const bf16*, std::int64_t, float*, float,
                           cudaStream_t);
template void Gemm::linear(const f16*, std::int64_t, std::int64_t, const f16*, std::int64_t, float*, float,
                           cudaStream_t);

}  // namespace chunkwise::cuda
