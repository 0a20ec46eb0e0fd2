// The 16-bit storage type of the CUDA backend: weights, the KV cache, GEMM and attention inputs.
// Arithmetic is fp32 either way. bf16 (the default) has fp32's range; fp16 has 3 more mantissa
// bits, so it tracks an fp32 reference more closely, but overflows past 65504.
//
// Plain C++ (no CUDA headers): the CLI and other host code name the type without the toolkit.
#pragma once

#include <string_view>

namespace chunkwise::cuda {

enum class DType { kBF16, kF16 };

constexpr std::string_view to_string(DType t) noexcept {
  return t == DType::kF16 ? "fp16" : "bf16";
}

}  // namespace chunkwise::cuda
