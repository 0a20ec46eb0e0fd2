#include "safetensors_writer.hpp"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "chunkwise/core/error.hpp"

namespace chunkwise::cli {

namespace {

// splitmix64's finaliser: a good 64-bit mix, used as a counter-based generator.
constexpr std::uint64_t mix64(std::uint64_t z) noexcept {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::uint64_t tensor_key(std::uint64_t seed, std::string_view name) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a of the name
  for (const char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return mix64(mix64(seed + 0x9e3779b97f4a7c15ULL) ^ h);
}

// Two independent normal(0, 1) values for pair p of a tensor (Box-Muller on 24-bit uniforms).
inline void normal_pair(std::uint64_t key, std::uint64_t p, float& z0, float& z1) noexcept {
  const std::uint64_t h = mix64(key + (p + 1) * 0x9e3779b97f4a7c15ULL);
  constexpr float kScale = 1.0f / 16777216.0f;                            // 2^-24
  const float u1 = static_cast<float>((h >> 40) + 1) * kScale;            // (0, 1]
  const float u2 = static_cast<float>((h >> 16) & 0xffffffULL) * kScale;  // [0, 1)
  const float r = std::sqrt(-2.0f * std::log(u1));
  const float a = 6.28318530717958647692f * u2;
  z0 = r * std::cos(a);
  z1 = r * std::sin(a);
}

inline std::uint16_t to_bf16(float f) noexcept {
  const auto x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7fffffffU) > 0x7f800000U) return static_cast<std::uint16_t>((x >> 16) | 0x40);  // NaN
  return static_cast<std::uint16_t>((x + 0x7fffU + ((x >> 16) & 1U)) >> 16);  // round to nearest even
}

// IEEE half, round to nearest even (subnormals included).
inline std::uint16_t to_f16(float f) noexcept {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = u & 0x80000000U;
  u ^= sign;
  std::uint32_t o = 0;
  if (u >= (127U + 16U) << 23) {
    o = u > 0x7f800000U ? 0x7e00U : 0x7c00U;  // NaN or overflow to infinity
  } else if (u < 113U << 23) {
    // Subnormal or zero: adding 0.5 aligns the 10 mantissa bits at the bottom, rounding to even.
    const float g = std::bit_cast<float>(u) + 0.5f;
    o = std::bit_cast<std::uint32_t>(g) - 0x3f000000U;
  } else {
    const std::uint32_t odd = (u >> 13) & 1U;
    u += (static_cast<std::uint32_t>(15 - 127) << 23) + 0xfffU + odd;
    o = u >> 13;
  }
  return static_cast<std::uint16_t>(o | (sign >> 16));
}

inline void store(OutDtype d, std::byte* out, std::size_t j, float v) noexcept {
  switch (d) {
    case OutDtype::kBF16: {
      const std::uint16_t b = to_bf16(v);
      std::memcpy(out + 2 * j, &b, 2);
      break;
    }
    case OutDtype::kF16: {
      const std::uint16_t b = to_f16(v);
      std::memcpy(out + 2 * j, &b, 2);
      break;
    }
    case OutDtype::kF32:
      std::memcpy(out + 4 * j, &v, 4);
      break;
  }
}

// Elements [begin, end) of a tensor into out[0 .. end-begin).
void fill_range(const SyntheticTensor& t, std::uint64_t key, OutDtype d, std::uint64_t begin,
                std::uint64_t end, std::byte* out) {
  if (t.stddev <= 0) {
    for (std::uint64_t i = begin; i < end; ++i) store(d, out, i - begin, t.constant);
    return;
  }
  std::uint64_t i = begin;
  float z0 = 0, z1 = 0;
  if (i < end && (i & 1U) != 0) {  // odd start: the second half of a pair
    normal_pair(key, i / 2, z0, z1);
    store(d, out, 0, z1 * t.stddev);
    ++i;
  }
  for (; i + 1 < end; i += 2) {
    normal_pair(key, i / 2, z0, z1);
    store(d, out, i - begin, z0 * t.stddev);
    store(d, out, i + 1 - begin, z1 * t.stddev);
  }
  if (i < end) {
    normal_pair(key, i / 2, z0, z1);
    store(d, out, i - begin, z0 * t.stddev);
  }
}

struct FileCloser {
  void operator()(std::FILE* f) const noexcept {
    if (f != nullptr) std::fclose(f);
  }
};

}  // namespace

std::string_view safetensors_name(OutDtype d) noexcept {
  switch (d) {
    case OutDtype::kBF16:
      return "BF16";
    case OutDtype::kF16:
      return "F16";
    case OutDtype::kF32:
      return "F32";
  }
  return "?";
}

std::size_t dtype_bytes(OutDtype d) noexcept {
  return d == OutDtype::kF32 ? 4 : 2;
}

std::uint64_t SyntheticTensor::elements() const {
  std::uint64_t n = 1;
  for (const std::int64_t x : shape) n *= static_cast<std::uint64_t>(x);
  return n;
}

void write_synthetic_safetensors(const std::filesystem::path& path, std::span<const SyntheticTensor> tensors,
                                 OutDtype dtype, std::uint64_t seed, int threads) {
  const std::size_t esize = dtype_bytes(dtype);
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}, {"generator", "chunkwise make-model"}};
  std::uint64_t offset = 0;
  for (const SyntheticTensor& t : tensors) {
    const std::uint64_t bytes = t.elements() * esize;
    header[t.name] = {
        {"dtype", safetensors_name(dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned, as the reference writer does

  const std::string where = path.string();
  std::unique_ptr<std::FILE, FileCloser> file(std::fopen(where.c_str(), "wb"));
  check(file != nullptr, ErrorCode::kIo, "cannot write '" + where + "': " + std::strerror(errno));
  std::FILE* f = file.get();
  std::byte len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xffU);
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
  check(ok, ErrorCode::kIo, "cannot write '" + where + "' (disk full?)");

  // Double buffering: one batch is written on a helper thread while the next is generated.
  constexpr std::uint64_t kBatch = std::uint64_t{1} << 24;  // elements
  constexpr std::uint64_t kPerThreadMin = std::uint64_t{1} << 16;
  std::uint64_t largest = 1;
  for (const SyntheticTensor& t : tensors) largest = std::max(largest, std::min(kBatch, t.elements()));
  std::vector<std::byte> buffers[2] = {std::vector<std::byte>(largest * esize),
                                       std::vector<std::byte>(largest * esize)};
  int cur = 0;
  std::future<bool> pending;
  const auto wait_pending = [&] {
    if (pending.valid() && !pending.get())
      throw Error(ErrorCode::kIo, "cannot write '" + where + "' (disk full?)");
  };
  const int nthreads = std::max(1, threads);
  for (const SyntheticTensor& t : tensors) {
    const std::uint64_t n = t.elements();
    const std::uint64_t key = tensor_key(seed, t.name);
    for (std::uint64_t start = 0; start < n; start += kBatch) {
      const std::uint64_t count = std::min(kBatch, n - start);
      std::byte* out = buffers[cur].data();
      // Pieces of an even number of elements, so that no pair is split across threads.
      const auto parts =
          static_cast<std::uint64_t>(std::clamp<std::uint64_t>(count / kPerThreadMin, 1, nthreads));
      const std::uint64_t piece = (count / parts + 1) & ~std::uint64_t{1};
      std::vector<std::jthread> workers;
      for (std::uint64_t b = piece; b < count; b += piece) {
        const std::uint64_t e = std::min(count, b + piece);
        workers.emplace_back([&t, key, dtype, start, b, e, out, esize] {
          fill_range(t, key, dtype, start + b, start + e, out + b * esize);
        });
      }
      fill_range(t, key, dtype, start, start + std::min(piece, count), out);
      workers.clear();  // joins
      wait_pending();
      const std::size_t bytes = count * esize;
      pending =
          std::async(std::launch::async, [f, out, bytes] { return std::fwrite(out, 1, bytes, f) == bytes; });
      cur ^= 1;
    }
  }
  wait_pending();
  ok = std::fflush(f) == 0;
  ok = std::fclose(file.release()) == 0 && ok;
  check(ok, ErrorCode::kIo, "cannot write '" + where + "' (disk full?)");
}

}  // namespace chunkwise::cli
