// fp16/bf16 conversions and the ggml block formats against hand-computed values.
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <vector>

#include "../../src/model/detail/dequant.hpp"
#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/model/gguf.hpp"
#include "error_code.hpp"

namespace {

using chunkwise::Error;
using chunkwise::ErrorCode;
namespace d = chunkwise::detail;
using Bytes = std::vector<std::byte>;

void put16(Bytes& b, std::uint16_t v) {
  b.push_back(static_cast<std::byte>(v & 0xFF));
  b.push_back(static_cast<std::byte>(v >> 8));
}

std::vector<float> decode(d::ElemType t, const Bytes& b, std::size_t n) {
  std::vector<float> out(n);
  d::dequantize(t, b, out);
  return out;
}

}  // namespace

TEST_CASE("dequant: fp16 to fp32", "[dequant]") {
  CHECK(d::fp16_to_fp32(0x3C00) == 1.0f);
  CHECK(d::fp16_to_fp32(0xC000) == -2.0f);
  CHECK(d::fp16_to_fp32(0x3555) == 0.333251953125f);
  CHECK(d::fp16_to_fp32(0x7BFF) == 65504.0f);
  CHECK(d::fp16_to_fp32(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(d::fp16_to_fp32(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(d::fp16_to_fp32(0x83FF) == -std::ldexp(1023.0f, -24));
  CHECK(d::fp16_to_fp32(0x0000) == 0.0f);
  CHECK(std::signbit(d::fp16_to_fp32(0x8000)));
  CHECK(d::fp16_to_fp32(0x7C00) == std::numeric_limits<float>::infinity());
  CHECK(d::fp16_to_fp32(0xFC00) == -std::numeric_limits<float>::infinity());
  CHECK(std::isnan(d::fp16_to_fp32(0x7E00)));
  CHECK(std::isnan(d::fp16_to_fp32(0x7C01)));
}

TEST_CASE("dequant: fp32 to fp16 rounds to nearest even", "[dequant]") {
  CHECK(d::fp32_to_fp16(1.0f) == 0x3C00);
  CHECK(d::fp32_to_fp16(-2.0f) == 0xC000);
  CHECK(d::fp32_to_fp16(65504.0f) == 0x7BFF);
  CHECK(d::fp32_to_fp16(65519.0f) == 0x7BFF);
  CHECK(d::fp32_to_fp16(65520.0f) == 0x7C00);  // halfway to 65536 rounds up to inf
  CHECK(d::fp32_to_fp16(1e9f) == 0x7C00);
  CHECK(d::fp32_to_fp16(-std::numeric_limits<float>::infinity()) == 0xFC00);
  CHECK((d::fp32_to_fp16(std::numeric_limits<float>::quiet_NaN()) & 0x7FFF) > 0x7C00);
  CHECK(d::fp32_to_fp16(1.0f + std::ldexp(1.0f, -11)) == 0x3C00);      // tie -> even
  CHECK(d::fp32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3C02);  // tie -> even
  CHECK(d::fp32_to_fp16(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)) == 0x3C01);
  CHECK(d::fp32_to_fp16(std::ldexp(1.0f, -25)) == 0x0000);      // tie between 0 and 1 subnormal ulp
  CHECK(d::fp32_to_fp16(3 * std::ldexp(1.0f, -25)) == 0x0002);  // tie -> even
  CHECK(d::fp32_to_fp16(1e-8f) == 0x0000);
  CHECK(d::fp32_to_fp16(3e-8f) == 0x0001);
  CHECK(d::fp32_to_fp16(std::ldexp(1023.0f, -24)) == 0x03FF);
  CHECK(d::fp32_to_fp16(std::ldexp(2047.0f, -25)) == 0x0400);  // rounds up into the normals
  // Every finite half survives the round trip.
  int bad = 0;
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0) continue;  // nan payloads
    if (d::fp32_to_fp16(d::fp16_to_fp32(static_cast<std::uint16_t>(h))) != h) ++bad;
  }
  CHECK(bad == 0);
}

TEST_CASE("dequant: bf16", "[dequant]") {
  CHECK(d::bf16_to_fp32(0x3F80) == 1.0f);
  CHECK(d::bf16_to_fp32(0xC040) == -3.0f);
  CHECK(d::bf16_to_fp32(0x3F81) == 1.0f + std::ldexp(1.0f, -7));
  CHECK(d::fp32_to_bf16(1.0f) == 0x3F80);
  CHECK(d::fp32_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3F80);      // tie -> even
  CHECK(d::fp32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3F82);  // tie -> even
  CHECK(std::isnan(d::bf16_to_fp32(d::fp32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST_CASE("dequant: plain float arrays", "[dequant]") {
  Bytes f16, bf16, f32;
  for (std::uint16_t h : {0x3C00, 0xC000, 0x3800}) put16(f16, h);
  for (std::uint16_t h : {0x3F80, 0xC040, 0x3F00}) put16(bf16, h);
  for (float x : {1.5f, -0.25f, 3.0f}) {
    const auto u = std::bit_cast<std::uint32_t>(x);
    put16(f32, static_cast<std::uint16_t>(u & 0xFFFF));
    put16(f32, static_cast<std::uint16_t>(u >> 16));
  }
  CHECK(decode(d::ElemType::kF16, f16, 3) == std::vector<float>{1.0f, -2.0f, 0.5f});
  CHECK(decode(d::ElemType::kBF16, bf16, 3) == std::vector<float>{1.0f, -3.0f, 0.5f});
  CHECK(decode(d::ElemType::kF32, f32, 3) == std::vector<float>{1.5f, -0.25f, 3.0f});
}

TEST_CASE("dequant: Q8_0 blocks", "[dequant]") {
  Bytes b;
  put16(b, 0x3800);  // d = 0.5
  const std::int8_t q[32] = {-128, -1, 0,  1,  127, 2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12,
                             13,   14, 15, 16, 17,  18, 19, 20, 21, 22, 23, 24, 25, 26, 27, -2};
  for (std::int8_t x : q) b.push_back(static_cast<std::byte>(x));
  put16(b, 0xC000);  // second block, d = -2
  for (int j = 0; j < 32; ++j) b.push_back(static_cast<std::byte>(static_cast<std::int8_t>(j - 16)));
  REQUIRE(b.size() == 68);
  const auto v = decode(d::ElemType::kQ8_0, b, 64);
  CHECK(v[0] == -64.0f);
  CHECK(v[1] == -0.5f);
  CHECK(v[2] == 0.0f);
  CHECK(v[3] == 0.5f);
  CHECK(v[4] == 63.5f);
  CHECK(v[31] == -1.0f);
  CHECK(v[32] == 32.0f);   // (0 - 16) * -2
  CHECK(v[63] == -30.0f);  // (31 - 16) * -2
}

TEST_CASE("dequant: Q4_0 blocks, low nibbles first", "[dequant]") {
  Bytes b;
  put16(b, 0x4000);  // d = 2
  for (int j = 0; j < 16; ++j) b.push_back(static_cast<std::byte>(j | ((15 - j) << 4)));
  REQUIRE(b.size() == 18);
  const auto v = decode(d::ElemType::kQ4_0, b, 32);
  for (int j = 0; j < 16; ++j) {
    CHECK(v[static_cast<std::size_t>(j)] == static_cast<float>((j - 8) * 2));       // low nibble j
    CHECK(v[static_cast<std::size_t>(j + 16)] == static_cast<float>((7 - j) * 2));  // high nibble 15 - j
  }
  CHECK(v[0] == -16.0f);
  CHECK(v[15] == 14.0f);
  CHECK(v[16] == 14.0f);
  CHECK(v[31] == -16.0f);
}

TEST_CASE("dequant: Q4_1 blocks", "[dequant]") {
  Bytes b;
  put16(b, 0x3400);  // d = 0.25
  put16(b, 0xBC00);  // m = -1
  for (int j = 0; j < 16; ++j) b.push_back(static_cast<std::byte>(j | ((15 - j) << 4)));
  put16(b, 0x0000);  // d = 0: every value is m
  put16(b, 0x4200);  // m = 3
  for (int j = 0; j < 16; ++j) b.push_back(static_cast<std::byte>(0xA5));
  REQUIRE(b.size() == 40);
  const auto v = decode(d::ElemType::kQ4_1, b, 64);
  for (int j = 0; j < 16; ++j) {
    CHECK(v[static_cast<std::size_t>(j)] == j * 0.25f - 1.0f);
    CHECK(v[static_cast<std::size_t>(j + 16)] == (15 - j) * 0.25f - 1.0f);
  }
  for (int j = 32; j < 64; ++j) CHECK(v[static_cast<std::size_t>(j)] == 3.0f);
}

TEST_CASE("dequant: sizes and row maps", "[dequant]") {
  CHECK(d::encoded_size(d::ElemType::kQ4_0, 64) == 36);
  CHECK(d::encoded_size(d::ElemType::kQ4_1, 32) == 20);
  CHECK(d::encoded_size(d::ElemType::kQ8_0, 96) == 102);
  CHECK(d::encoded_size(d::ElemType::kF16, 3) == 6);
  CHECK(d::encoded_size(d::ElemType::kBF16, 0) == 0);
  CHECK(chunkwise::test::error_code([] { (void)d::encoded_size(d::ElemType::kQ4_0, 33); }) ==
        ErrorCode::kModelFormat);
  CHECK(chunkwise::test::error_code([] { (void)d::encoded_size(d::ElemType::kF32, ~std::uint64_t{0}); }) ==
        ErrorCode::kModelFormat);
  std::vector<float> out(4);
  CHECK(chunkwise::test::error_code([&] { d::dequantize(d::ElemType::kF32, Bytes(12), out); }) ==
        ErrorCode::kModelFormat);

  // Rows land where the map says.
  Bytes m;
  for (std::uint16_t h : {0x3C00, 0x4000, 0x4200, 0x4400, 0x4500, 0x4600}) put16(m, h);  // 1..6
  std::vector<float> dst(6);
  const std::int64_t order[] = {2, 0, 1};
  d::dequantize_rows(d::ElemType::kF16, m, 3, 2, dst, order);
  CHECK(dst == std::vector<float>{3, 4, 5, 6, 1, 2});
  d::dequantize_rows(d::ElemType::kF16, m, 3, 2, dst);
  CHECK(dst == std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(chunkwise::test::error_code([&] { d::dequantize_rows(d::ElemType::kF16, m, 2, 2, dst); }) ==
        ErrorCode::kModelFormat);
  const std::int64_t bad_order[] = {0, 0, 5};
  CHECK(chunkwise::test::error_code([&] {
          d::dequantize_rows(d::ElemType::kF16, m, 3, 2, dst, bad_order);
        }).has_value());
}

TEST_CASE("dequant: ggml type table", "[dequant]") {
  namespace g = chunkwise::gguf;
  REQUIRE(g::type_traits(2) != nullptr);
  CHECK(g::type_traits(2)->name == "Q4_0");
  CHECK(g::type_traits(2)->block_elems == 32);
  CHECK(g::type_traits(2)->block_bytes == 18);
  CHECK(g::type_traits(3)->block_bytes == 20);
  CHECK(g::type_traits(8)->block_bytes == 34);
  CHECK(g::type_traits(30)->name == "BF16");
  CHECK(g::type_traits(14)->block_elems == 256);
  CHECK(g::type_traits(4) == nullptr);  // retired Q4_2
  CHECK(g::type_traits(1000) == nullptr);
}
