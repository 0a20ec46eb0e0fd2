// Matrix products through cuBLASLt: y[m, n] = x[m, k] · w[n, k]ᵀ (+ beta · y), 16-bit operands
// (bf16 or fp16), fp32 accumulation and fp32 output. A linear layer in Hugging Face weight
// orientation, row-major.
//
// The descriptors and the algorithm of each shape are chosen once (cublasLtMatmulAlgoGetHeuristic)
// and kept, so a product costs one cublasLtMatmul call on the host. That matters where the steps
// are narrow (decode, the layers after a selective recompute's check layer): there the host's
// time per launch, not the GPU, sets the step time.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstdint>
#include <memory>

#include "chunkwise/cuda/common.hpp"

namespace chunkwise::cuda {

// Throws Error(kBackend) naming the call when a cuBLAS or cuBLASLt call fails.
void check_cublas(cublasStatus_t status, const char* what);

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // beta = 1 adds the product to y (a residual add for free); beta = 0 overwrites it. T is bf16 or
  // f16. Runs on `stream`; the workspace is shared by the calls, so one Gemm serves one stream at a
  // time.
  template <class T>
  void linear(const T* x, std::int64_t m, std::int64_t k, const T* w, std::int64_t n, float* y, float beta,
              cudaStream_t stream);

  // Shapes planned so far (each kept until the Gemm is destroyed, or all dropped past a bound).
  [[nodiscard]] std::size_t plans() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chunkwise::cuda
