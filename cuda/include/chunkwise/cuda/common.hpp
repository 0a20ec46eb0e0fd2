// Shared CUDA plumbing: error checks that throw chunkwise::Error(kBackend), the 16-bit storage
// types (bf16, fp16; chunkwise/cuda/dtype.hpp), and an owning device buffer. Every launcher in
// chunkwise::cuda takes raw device pointers with explicit shapes and a stream, FlashInfer-style, so
// steps can be captured in CUDA graphs.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/dtype.hpp"

namespace chunkwise::cuda {

// The storage element types; kernels that read or write storage are templates over them.
using bf16 = __nv_bfloat16;
using f16 = __half;
static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2, "16-bit storage");

// Throws Error(kBackend) naming the call when a CUDA runtime call fails.
// A failed runtime call also leaves its error in the thread's last-error slot; it is cleared here so
// that the next launch check does not report it again (a bad device ordinal, an allocation that did
// not fit). Sticky errors (a kernel fault) stay and keep failing every call, as they should.
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw Error(ErrorCode::kBackend, std::string(what) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
  }
}
// After a kernel launch: a bad launch configuration shows up here.
inline void check_launch(const char* kernel) { check_cuda(cudaGetLastError(), kernel); }

// Owning, uninitialised device memory for n elements of T.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) : n_(n) {
    if (n > 0) check_cuda(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)), "cudaMalloc");
  }
  ~DeviceBuffer() {
    if (p_) cudaFree(p_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  [[nodiscard]] T* get() const { return p_; }
  [[nodiscard]] std::size_t size() const { return n_; }
  [[nodiscard]] std::size_t bytes() const { return n_ * sizeof(T); }
  // Grows (never shrinks) to at least n elements; contents are not kept.
  void reserve(std::size_t n) {
    if (n > n_) *this = DeviceBuffer(n);
  }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace chunkwise::cuda
