// Decoding of stored tensor element formats (plain floats and ggml block quantizations) to fp32.
// Shared by the GGUF and safetensors readers; block layouts follow ggml's ggml-common.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

namespace chunkwise::detail {

// The encodings the loaders can turn into fp32.
enum class ElemType {
  kF32,
  kF16,
  kBF16,
  kQ8_0,  // block of 32: fp16 scale d, int8 q[32]; x = q * d
  kQ4_0,  // block of 32: fp16 d, 16 bytes of nibbles; x = (q - 8) * d; low nibbles are 0..15
  kQ4_1,  // block of 32: fp16 d, fp16 m, 16 bytes of nibbles; x = q * d + m
};

struct ElemLayout {
  std::int64_t block_elems;  // elements per block (1 for plain floats)
  std::int64_t block_bytes;  // bytes per block
};

[[nodiscard]] ElemLayout layout(ElemType type) noexcept;
[[nodiscard]] std::string_view name(ElemType type) noexcept;

[[nodiscard]] float fp16_to_fp32(std::uint16_t h) noexcept;
[[nodiscard]] float bf16_to_fp32(std::uint16_t h) noexcept;
// Round to nearest even; used by writers (tests, tools) rather than by loading.
[[nodiscard]] std::uint16_t fp32_to_fp16(float f) noexcept;
[[nodiscard]] std::uint16_t fp32_to_bf16(float f) noexcept;

// Bytes that n elements take. Throws Error(kModelFormat) when n is not a whole number of blocks.
[[nodiscard]] std::uint64_t encoded_size(ElemType type, std::uint64_t n);

// Decodes src, which must hold exactly encoded_size(type, dst.size()) bytes, into dst.
void dequantize(ElemType type, std::span<const std::byte> src, std::span<float> dst);

// One row-major [rows, cols] matrix to decode into dst (rows * cols floats). Source row r lands in
// destination row dst_row[r] when dst_row is non-empty (used to undo llama.cpp's Q/K row
// permutation without a second copy).
struct RowJob {
  ElemType type = ElemType::kF32;
  std::span<const std::byte> src;
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::span<float> dst;
  std::vector<std::int64_t> dst_row;
};

// Checks every job (sizes, row map), throwing Error(kModelFormat) before touching any output, then
// decodes them all in a single parallel region: one region per model rather than one per tensor,
// which matters when the cores are shared and every barrier waits for a descheduled thread.
void dequantize_rows(std::span<const RowJob> jobs);

// Convenience for a single matrix.
void dequantize_rows(ElemType type, std::span<const std::byte> src, std::int64_t rows, std::int64_t cols,
                     std::span<float> dst, std::span<const std::int64_t> dst_row = {});

}  // namespace chunkwise::detail
