// Private to the kernels (cuda/*.cu): conversions between fp32 and the 16-bit storage types
// (bf16, fp16), one element or two packed in a 32-bit word, so that every kernel is written once
// as a template over the storage type. Rounding is to nearest even.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "chunkwise/cuda/common.hpp"

namespace chunkwise::cuda {

__device__ __forceinline__ float to_float(bf16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float to_float(f16 x) {
  return __half2float(x);
}
// fp32 itself, for kernels templated over fp32 or a storage type.
__device__ __forceinline__ float to_float(float x) {
  return x;
}

template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ f16 from_float<f16>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}

// Two values in one 32-bit word, the first (lower address) in the low half.
template <class T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
  std::uint32_t w;
  if constexpr (std::is_same_v<T, bf16>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&w, &v, sizeof(w));
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&w, &v, sizeof(w));
  }
  return w;
}

template <class T>
__device__ __forceinline__ float2 unpack2(std::uint32_t w) {
  if constexpr (std::is_same_v<T, bf16>) {
    // A bf16 is the top half of its fp32 value.
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
  } else {
    __half2 v;
    memcpy(&v, &w, sizeof(w));
    return __half22float2(v);
  }
}

}  // namespace chunkwise::cuda
