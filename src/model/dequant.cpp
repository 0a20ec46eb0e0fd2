#include "detail/dequant.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

#include "chunkwise/core/error.hpp"

namespace chunkwise::detail {
namespace {

constexpr std::int64_t kQK = 32;  // elements per ggml Q4/Q8 block

// Little-endian loads that neither assume alignment nor host byte order.
inline std::uint16_t load_u16(const std::byte* p) noexcept {
  return static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) | (std::to_integer<unsigned>(p[1]) << 8));
}
[[maybe_unused]] inline float load_f32(const std::byte* p) noexcept {
  std::uint32_t u = 0;
  for (int i = 3; i >= 0; --i) u = (u << 8) | std::to_integer<std::uint32_t>(p[i]);
  return std::bit_cast<float>(u);
}

void decode_row(ElemType type, const std::byte* src, std::int64_t n, float* dst) noexcept {
  if (n <= 0) return;  // empty tensors may come with null pointers, which memcpy must not see
  switch (type) {
    case ElemType::kF32:
      if constexpr (std::endian::native == std::endian::little) {
        std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
      } else {
        for (std::int64_t i = 0; i < n; ++i) dst[i] = load_f32(src + 4 * i);
      }
      return;
    case ElemType::kF16:
      for (std::int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(load_u16(src + 2 * i));
      return;
    case ElemType::kBF16:
      for (std::int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(src + 2 * i));
      return;
    case ElemType::kQ8_0:
      for (std::int64_t b = 0; b < n / kQK; ++b) {
        const std::byte* blk = src + b * 34;
        const float d = fp16_to_fp32(load_u16(blk));
        float* y = dst + b * kQK;
        for (int j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<std::int8_t>(blk[2 + j])) * d;
      }
      return;
    case ElemType::kQ4_0:
      for (std::int64_t b = 0; b < n / kQK; ++b) {
        const std::byte* blk = src + b * 18;
        const float d = fp16_to_fp32(load_u16(blk));
        float* y = dst + b * kQK;
        for (int j = 0; j < kQK / 2; ++j) {
          const unsigned q = std::to_integer<unsigned>(blk[2 + j]);
          y[j] = static_cast<float>(static_cast<int>(q & 0x0F) - 8) * d;
          y[j + kQK / 2] = static_cast<float>(static_cast<int>(q >> 4) - 8) * d;
        }
      }
      return;
    case ElemType::kQ4_1:
      for (std::int64_t b = 0; b < n / kQK; ++b) {
        const std::byte* blk = src + b * 20;
        const float d = fp16_to_fp32(load_u16(blk));
        const float m = fp16_to_fp32(load_u16(blk + 2));
        float* y = dst + b * kQK;
        for (int j = 0; j < kQK / 2; ++j) {
          const unsigned q = std::to_integer<unsigned>(blk[4 + j]);
          y[j] = static_cast<float>(q & 0x0F) * d + m;
          y[j + kQK / 2] = static_cast<float>(q >> 4) * d + m;
        }
      }
      return;
  }
}

}  // namespace

ElemLayout layout(ElemType type) noexcept {
  switch (type) {
    case ElemType::kF32:
      return {1, 4};
    case ElemType::kF16:
      return {1, 2};
    case ElemType::kBF16:
      return {1, 2};
    case ElemType::kQ8_0:
      return {kQK, 34};
    case ElemType::kQ4_0:
      return {kQK, 18};
    case ElemType::kQ4_1:
      return {kQK, 20};
  }
  return {1, 4};
}

std::string_view name(ElemType type) noexcept {
  switch (type) {
    case ElemType::kF32:
      return "F32";
    case ElemType::kF16:
      return "F16";
    case ElemType::kBF16:
      return "BF16";
    case ElemType::kQ8_0:
      return "Q8_0";
    case ElemType::kQ4_0:
      return "Q4_0";
    case ElemType::kQ4_1:
      return "Q4_1";
  }
  return "?";
}

float fp16_to_fp32(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  const std::uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));  // inf, nan
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
  // Zero or subnormal: mant * 2^-24 is exact in fp32.
  const float v = std::ldexp(static_cast<float>(mant), -24);
  return sign ? -v : v;
}

float bf16_to_fp32(std::uint16_t h) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

std::uint16_t fp32_to_fp16(float f) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u);   // nan stays nan
  if (ax >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {
    // Below the smallest normal half: scaling by 2^24 is exact, nearbyint rounds to even.
    const float scaled = std::bit_cast<float>(ax) * 16777216.0f;
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::nearbyint(scaled)));
  }
  std::uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | ((ax & 0x7FFFFFu) >> 13));
  const std::uint32_t rem = ax & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
  return static_cast<std::uint16_t>(sign | h);
}

std::uint16_t fp32_to_bf16(float f) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40u);  // quiet nan
  return static_cast<std::uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

std::uint64_t encoded_size(ElemType type, std::uint64_t n) {
  const ElemLayout l = layout(type);
  const auto block = static_cast<std::uint64_t>(l.block_elems);
  if (n % block != 0) {
    throw Error(ErrorCode::kModelFormat,
                fmt::format("{} data of {} elements is not a whole number of {}-element blocks", name(type),
                            n, block));
  }
  const std::uint64_t blocks = n / block;
  const auto bytes = static_cast<std::uint64_t>(l.block_bytes);
  if (blocks > std::numeric_limits<std::uint64_t>::max() / bytes) {
    throw Error(ErrorCode::kModelFormat,
                fmt::format("{} data of {} elements overflows a byte count", name(type), n));
  }
  return blocks * bytes;
}

void dequantize(ElemType type, std::span<const std::byte> src, std::span<float> dst) {
  const std::uint64_t need = encoded_size(type, dst.size());
  if (src.size() != need) {
    throw Error(ErrorCode::kModelFormat, fmt::format("{} data for {} elements needs {} bytes, got {}",
                                                     name(type), dst.size(), need, src.size()));
  }
  decode_row(type, src.data(), static_cast<std::int64_t>(dst.size()), dst.data());
}

namespace {

void check_job(const RowJob& j) {
  if (j.rows < 0 || j.cols < 0 ||
      (j.cols != 0 && j.rows > std::numeric_limits<std::int64_t>::max() / j.cols)) {
    throw Error(ErrorCode::kModelFormat, fmt::format("bad matrix shape [{}, {}]", j.rows, j.cols));
  }
  const std::uint64_t row_bytes = encoded_size(j.type, static_cast<std::uint64_t>(j.cols));
  const auto rows = static_cast<std::uint64_t>(j.rows);
  if (static_cast<std::uint64_t>(j.rows * j.cols) != j.dst.size() ||
      (rows != 0 && row_bytes > std::numeric_limits<std::uint64_t>::max() / rows) ||
      j.src.size() != row_bytes * rows) {
    throw Error(ErrorCode::kModelFormat,
                fmt::format("{} matrix [{}, {}]: {} source bytes / {} destination floats do not match",
                            name(j.type), j.rows, j.cols, j.src.size(), j.dst.size()));
  }
  if (!j.dst_row.empty()) {
    if (j.dst_row.size() != rows) {
      throw Error(ErrorCode::kInvalidArgument, "dequantize_rows: row map size differs from row count");
    }
    for (const std::int64_t r : j.dst_row) {
      if (r < 0 || r >= j.rows)
        throw Error(ErrorCode::kInvalidArgument, "dequantize_rows: row map out of range");
    }
  }
}

}  // namespace

void dequantize_rows(std::span<const RowJob> jobs) {
  // Validate everything first: exceptions must not escape an OpenMP region.
  struct Chunk {
    const RowJob* job;
    std::int64_t row_begin, row_end;
    std::uint64_t row_bytes;
  };
  std::vector<Chunk> chunks;
  std::int64_t total = 0;
  for (const RowJob& j : jobs) {
    check_job(j);
    if (j.rows == 0 || j.cols == 0) continue;
    const std::uint64_t row_bytes = encoded_size(j.type, static_cast<std::uint64_t>(j.cols));
    // Chunks of about 64K elements balance well without much scheduling overhead.
    const std::int64_t step = std::max<std::int64_t>(1, (std::int64_t{1} << 16) / j.cols);
    for (std::int64_t r = 0; r < j.rows; r += step)
      chunks.push_back({&j, r, std::min(j.rows, r + step), row_bytes});
    total += j.rows * j.cols;
  }
  // Tiny inputs (test models, fuzz cases) are not worth waking the thread pool for.
  [[maybe_unused]] const bool parallel = total >= (std::int64_t{1} << 18);
  const auto n = static_cast<std::int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic) if (parallel)
  for (std::int64_t i = 0; i < n; ++i) {
    const Chunk& c = chunks[static_cast<std::size_t>(i)];
    const RowJob& j = *c.job;
    for (std::int64_t r = c.row_begin; r < c.row_end; ++r) {
      const std::int64_t to = j.dst_row.empty() ? r : j.dst_row[static_cast<std::size_t>(r)];
      decode_row(j.type, j.src.data() + static_cast<std::uint64_t>(r) * c.row_bytes, j.cols,
                 j.dst.data() + to * j.cols);
    }
  }
}

void dequantize_rows(ElemType type, std::span<const std::byte> src, std::int64_t rows, std::int64_t cols,
                     std::span<float> dst, std::span<const std::int64_t> dst_row) {
  const RowJob job{type, src, rows, cols, dst, {dst_row.begin(), dst_row.end()}};
  dequantize_rows(std::span<const RowJob>(&job, 1));
}

}  // namespace chunkwise::detail
