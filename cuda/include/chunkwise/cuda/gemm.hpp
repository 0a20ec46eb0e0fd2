// Matrix products through cuBLAS: y[m, n] = x[m, k] · w[n, k]ᵀ (+ beta · y), 16-bit operands
// (bf16 or fp16), fp32 accumulation and fp32 output. A linear layer in Hugging Face weight
// orientation, row-major.
#pragma once

#include <cublas_v2.h>

#include <cstdint>

#include "chunkwise/cuda/common.hpp"

namespace chunkwise::cuda {

// Throws Error(kBackend) naming the call when a cuBLAS call fails.
void check_cublas(cublasStatus_t status, const char* what);

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // beta = 1 adds the product to y (a residual add for free); beta = 0 overwrites it. T is bf16 or
  // f16.
  template <class T>
  void linear(const T* x, std::int64_t m, std::int64_t k, const T* w, std::int64_t n, float* y, float beta,
              cudaStream_t stream);

 private:
  cublasHandle_t handle_ = nullptr;
};

}  // namespace chunkwise::cuda
