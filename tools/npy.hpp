#pragma once

#include <cstdint>
#include <filesystem>
#include <span>

namespace chunkwise::cli {

// Writes a float32 C-order array of shape (rows, cols) as NumPy .npy v1.0.
void write_npy(const std::filesystem::path& file, std::span<const float> data, std::int64_t rows,
               std::int64_t cols);

}  // namespace chunkwise::cli
