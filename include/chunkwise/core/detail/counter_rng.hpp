// The counter-based random draw of sampling, shared by the host sampler (src/core/sampling.cpp) and
// the CUDA one (cuda/sampling.cu), which must draw bit for bit the same numbers.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define CHUNKWISE_HOST_DEVICE __host__ __device__
#else
#define CHUNKWISE_HOST_DEVICE
#endif

namespace chunkwise::detail {

CHUNKWISE_HOST_DEVICE constexpr std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

// 64 random bits, a pure function of (seed, step): no generator state to carry between steps, so a
// request draws the same numbers whichever batch, process or device it runs on.
CHUNKWISE_HOST_DEVICE constexpr std::uint64_t sample_bits(std::uint64_t seed, std::uint64_t step) {
  return splitmix64(seed ^ splitmix64(step));
}

// Uniform in [0, 1) with 53 random bits.
CHUNKWISE_HOST_DEVICE constexpr double sample_uniform(std::uint64_t seed, std::uint64_t step) {
  return static_cast<double>(sample_bits(seed, step) >> 11) * 0x1.0p-53;
}

}  // namespace chunkwise::detail
