// Streams a safetensors file of synthetic tensors (random normal or constant) to disk without
// holding a tensor in memory: values come from a counter-based generator, filled in parallel
// batches and written while the next batch is generated. Used by `chunkwise make-model`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace chunkwise::cli {

enum class OutDtype { kBF16, kF16, kF32 };

[[nodiscard]] std::string_view safetensors_name(OutDtype d) noexcept;  // "BF16", "F16", "F32"
[[nodiscard]] std::size_t dtype_bytes(OutDtype d) noexcept;

struct SyntheticTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  float stddev = 0;    // > 0: normal(0, stddev); 0: every element equals `constant`
  float constant = 0;  // used when stddev == 0

  [[nodiscard]] std::uint64_t elements() const;
};

// Writes `tensors`, in that order, to `path`. Element i of a normal tensor is a pure function of
// (seed, tensor name, i), so the file is the same whatever `threads` is. Throws Error(kIo) if the
// file cannot be written.
void write_synthetic_safetensors(const std::filesystem::path& path, std::span<const SyntheticTensor> tensors,
                                 OutDtype dtype, std::uint64_t seed, int threads);

}  // namespace chunkwise::cli
