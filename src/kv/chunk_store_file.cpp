// ChunkKey and ChunkKv helpers, and the chunk store's file format (include/chunkwise/kv/detail/
// chunk_file.hpp): encoding, header checks and decoding. Nothing here touches the file system.
#include <zlib.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <iterator>
#include <limits>
#include <string>

#include "chunkwise/core/error.hpp"
#include "chunkwise/kv/block_hash.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/kv/detail/chunk_file.hpp"

static_assert(std::endian::native == std::endian::little,
              "the chunk file format and chunk keys assume a little-endian host");
static_assert(sizeof(chunkwise::TokenId) == 4 && sizeof(float) == 4);

namespace chunkwise {

namespace {

constexpr std::array<char, 8> kMagic = {'C', 'W', 'C', 'H', 'U', 'N', 'K', '\0'};

// a * b, or nullopt when it does not fit 64 bits.
std::optional<std::uint64_t> mul(std::uint64_t a, std::uint64_t b) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return std::nullopt;
  return a * b;
}

// 2 * n_layers * n_tokens * kv_dim, or nullopt on overflow.
std::optional<std::uint64_t> data_elements(std::int64_t n_tokens, std::int64_t n_layers,
                                           std::int64_t kv_dim) {
  auto e = mul(2U * static_cast<std::uint64_t>(n_layers), static_cast<std::uint64_t>(n_tokens));
  return e ? mul(*e, static_cast<std::uint64_t>(kv_dim)) : std::nullopt;
}

// Two independent 64-bit lanes over a byte stream, 8 bytes at a time.
class Digest128 {
 public:
  void bytes(const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    total_ += n;
    while (n > 0) {
      const std::size_t take = std::min(n, 8 - fill_);
      std::memcpy(reinterpret_cast<unsigned char*>(&buf_) + fill_, b, take);
      fill_ += take;
      b += take;
      n -= take;
      if (fill_ == 8) flush();
    }
  }
  void u64(std::uint64_t v) { bytes(&v, sizeof v); }
  // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
  void str(std::string_view s) {
    u64(s.size());
    bytes(s.data(), s.size());
  }
  ChunkKey finish() {
    if (fill_ > 0) flush();
    a_ = kv::mix64(a_ ^ total_);
    b_ = kv::mix64(b_ + total_ * 0xc2b2ae3d27d4eb4fULL);
    return {b_, a_};
  }

 private:
  void flush() {
    const std::uint64_t w = buf_;
    a_ = kv::mix64(a_ ^ w) + 0x9e3779b97f4a7c15ULL;
    b_ = kv::mix64(std::rotl(b_, 23) + w * 0xff51afd7ed558ccdULL) ^ 0xd6e8feb86659fd93ULL;
    buf_ = 0;
    fill_ = 0;
  }
  std::uint64_t a_ = 0x243f6a8885a308d3ULL;  // digits of pi: the two lanes start apart
  std::uint64_t b_ = 0x13198a2e03707344ULL;
  std::uint64_t buf_ = 0;
  std::size_t fill_ = 0;
  std::uint64_t total_ = 0;
};

template <class T>
void put(std::byte* at, T v) {
  std::memcpy(at, &v, sizeof v);
}
template <class T>
T get(const std::byte* at) {
  T v;
  std::memcpy(&v, at, sizeof v);
  return v;
}

std::uint32_t crc32_of(const std::byte* p, std::size_t n) {
  return static_cast<std::uint32_t>(
      ::crc32_z(::crc32_z(0L, Z_NULL, 0), reinterpret_cast<const Bytef*>(p), static_cast<z_size_t>(n)));
}

// Byte j of 4-byte word i goes to j * words + i: the sign/exponent bytes of floats end up
// together, which deflate compresses far better than interleaved mantissas.
class ShuffleWriter {
 public:
  ShuffleWriter(std::byte* out, std::size_t words) : out_(out), words_(words) {}
  template <class T>
  void append(std::span<const T> xs) {
    static_assert(sizeof(T) == 4);
    for (const T& x : xs) {
      std::array<std::byte, 4> b;
      std::memcpy(b.data(), &x, 4);
      for (std::size_t j = 0; j < 4; ++j) out_[j * words_ + at_] = b[j];
      ++at_;
    }
  }

 private:
  std::byte* out_;
  std::size_t words_;
  std::size_t at_ = 0;
};

class ShuffleReader {
 public:
  ShuffleReader(const std::byte* in, std::size_t words) : in_(in), words_(words) {}
  template <class T>
  void read(std::span<T> xs) {
    static_assert(sizeof(T) == 4);
    for (T& x : xs) {
      std::array<std::byte, 4> b;
      for (std::size_t j = 0; j < 4; ++j) b[j] = in_[j * words_ + at_];
      std::memcpy(&x, b.data(), 4);
      ++at_;
    }
  }

 private:
  const std::byte* in_;
  std::size_t words_;
  std::size_t at_ = 0;
};

}  // namespace

std::string ChunkKey::hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(32, '0');
  for (int i = 0; i < 16; ++i) {
    s[static_cast<std::size_t>(15 - i)] = kDigits[(hi >> (4 * i)) & 0xF];
    s[static_cast<std::size_t>(31 - i)] = kDigits[(lo >> (4 * i)) & 0xF];
  }
  return s;
}

ChunkKey chunk_key(std::span<const TokenId> tokens, std::string_view model_id, std::string_view salt) {
  Digest128 d;
  d.str("chunkwise.chunk.v1");
  d.str(model_id);
  d.str(salt);
  d.u64(tokens.size());
  d.bytes(tokens.data(), tokens.size_bytes());
  return d.finish();
}

ChunkKv ChunkKv::zeros(std::span<const TokenId> tokens, int n_layers, int kv_dim, int position0) {
  check(!tokens.empty() && n_layers > 0 && kv_dim > 0 && position0 >= 0, ErrorCode::kInvalidArgument,
        "ChunkKv::zeros: tokens, n_layers and kv_dim must be positive and position0 >= 0");
  check(tokens.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()),
        ErrorCode::kInvalidArgument, "ChunkKv::zeros: too many tokens");
  ChunkKv kv;
  kv.n_tokens = static_cast<std::int32_t>(tokens.size());
  kv.n_layers = n_layers;
  kv.kv_dim = kv_dim;
  kv.position0 = position0;
  kv.tokens.assign(tokens.begin(), tokens.end());
  const auto n = data_elements(kv.n_tokens, n_layers, kv_dim);
  check(n && *n <= kv.data.max_size(), ErrorCode::kInvalidArgument, "ChunkKv::zeros: shape too large");
  kv.data.assign(static_cast<std::size_t>(*n), 0.0F);
  return kv;
}

ChunkKv ChunkKv::rows(std::int32_t from, std::int32_t to) const {
  check(from >= 0 && from < to && to <= n_tokens, ErrorCode::kInvalidArgument, [&] {
    return "ChunkKv::rows: [" + std::to_string(from) + ", " + std::to_string(to) + ") of " +
           std::to_string(n_tokens) + " tokens";
  });
  const auto span_of = [&](auto first, std::int32_t width) {
    return std::span(first + static_cast<std::ptrdiff_t>(from) * width,
                     static_cast<std::size_t>(to - from) * static_cast<std::size_t>(width));
  };
  ChunkKv out = zeros(span_of(tokens.begin(), 1), n_layers, kv_dim, position0 + from);
  for (int l = 0; l < n_layers; ++l) {
    std::ranges::copy(span_of(k(l).begin(), kv_dim), out.k(l).begin());
    std::ranges::copy(span_of(v(l).begin(), kv_dim), out.v(l).begin());
  }
  const int stats = stats_per_token();
  if (stats > 0) std::ranges::copy(span_of(token_stats.begin(), stats), std::back_inserter(out.token_stats));
  return out;
}

void ChunkKv::validate() const {
  check(n_tokens > 0 && n_layers > 0 && kv_dim > 0, ErrorCode::kInvalidArgument, [&] {
    return "ChunkKv: n_tokens, n_layers and kv_dim must be positive (got " + std::to_string(n_tokens) + ", " +
           std::to_string(n_layers) + ", " + std::to_string(kv_dim) + ")";
  });
  check(position0 >= 0, ErrorCode::kInvalidArgument, "ChunkKv: position0 must be >= 0");
  check(tokens.size() == static_cast<std::size_t>(n_tokens), ErrorCode::kInvalidArgument, [&] {
    return "ChunkKv: " + std::to_string(tokens.size()) +
           " token ids for n_tokens = " + std::to_string(n_tokens);
  });
  const auto n = data_elements(n_tokens, n_layers, kv_dim);
  check(n && data.size() == *n, ErrorCode::kInvalidArgument, [&] {
    return "ChunkKv: data holds " + std::to_string(data.size()) +
           " floats, not 2 x n_layers x n_tokens x kv_dim = " + (n ? std::to_string(*n) : "(overflow)");
  });
  check(token_stats.size() % static_cast<std::size_t>(n_tokens) == 0, ErrorCode::kInvalidArgument, [&] {
    return "ChunkKv: token_stats holds " + std::to_string(token_stats.size()) +
           " floats, not a multiple of n_tokens = " + std::to_string(n_tokens);
  });
  check(token_stats.size() <= std::numeric_limits<std::uint32_t>::max(), ErrorCode::kInvalidArgument,
        "ChunkKv: too many token_stats");
}

std::span<float> ChunkKv::slice(int layer, int which) {
  const auto s = std::as_const(*this).slice(layer, which);
  return {const_cast<float*>(s.data()), s.size()};
}

std::span<const float> ChunkKv::slice(int layer, int which) const {
  check(layer >= 0 && layer < n_layers, ErrorCode::kInvalidArgument,
        [&] { return "ChunkKv: layer " + std::to_string(layer) + " of " + std::to_string(n_layers); });
  const std::size_t plane = static_cast<std::size_t>(n_tokens) * static_cast<std::size_t>(kv_dim);
  const std::size_t at = (2 * static_cast<std::size_t>(layer) + static_cast<std::size_t>(which)) * plane;
  check(at + plane <= data.size(), ErrorCode::kInvalidArgument, "ChunkKv: data is smaller than its shape");
  return {data.data() + at, plane};
}

namespace detail {

std::vector<std::byte> encode_chunk_file(const ChunkKey& key, const ChunkKv& kv, int level) {
  kv.validate();
  const std::size_t words = kv.tokens.size() + kv.data.size() + kv.token_stats.size();
  const std::size_t raw_bytes = words * 4;
  std::vector<std::byte> raw(raw_bytes);
  ShuffleWriter w(raw.data(), words);
  w.append(std::span<const TokenId>(kv.tokens));
  w.append(std::span<const float>(kv.data));
  w.append(std::span<const float>(kv.token_stats));

  std::vector<std::byte> file(kChunkFileHeaderBytes + ::compressBound(static_cast<uLong>(raw_bytes)));
  auto stored = static_cast<uLongf>(file.size() - kChunkFileHeaderBytes);
  const int rc =
      ::compress2(reinterpret_cast<Bytef*>(file.data() + kChunkFileHeaderBytes), &stored,
                  reinterpret_cast<const Bytef*>(raw.data()), static_cast<uLong>(raw_bytes), level);
  check(rc == Z_OK, ErrorCode::kIo,
        [&] { return "chunk file: zlib compress2 failed (" + std::to_string(rc) + ")"; });
  file.resize(kChunkFileHeaderBytes + stored);

  std::byte* h = file.data();
  std::memcpy(h, kMagic.data(), kMagic.size());
  put<std::uint32_t>(h + 8, kChunkFileVersion);
  put<std::uint32_t>(h + 12, static_cast<std::uint32_t>(kChunkFileHeaderBytes));
  put<std::uint64_t>(h + 16, key.hi);
  put<std::uint64_t>(h + 24, key.lo);
  put<std::int32_t>(h + 32, kv.n_tokens);
  put<std::int32_t>(h + 36, kv.n_layers);
  put<std::int32_t>(h + 40, kv.kv_dim);
  put<std::int32_t>(h + 44, kv.position0);
  put<std::uint32_t>(h + 48, static_cast<std::uint32_t>(kv.token_stats.size()));
  put<std::uint32_t>(h + 52, kChunkFileFlags);
  put<std::uint64_t>(h + 56, raw_bytes);
  put<std::uint64_t>(h + 64, static_cast<std::uint64_t>(stored));
  put<std::uint32_t>(h + 72, crc32_of(file.data() + kChunkFileHeaderBytes, stored));
  put<std::uint32_t>(h + 76, crc32_of(h, 76));
  return file;
}

std::optional<ChunkFileHeader> parse_chunk_header(std::span<const std::byte> head, std::uint64_t file_size,
                                                  std::string& why) {
  auto fail = [&](std::string reason) -> std::optional<ChunkFileHeader> {
    why = std::move(reason);
    return std::nullopt;
  };
  if (head.size() < kChunkFileHeaderBytes || file_size < kChunkFileHeaderBytes)
    return fail("truncated header (" + std::to_string(std::min<std::uint64_t>(head.size(), file_size)) +
                " bytes)");
  const std::byte* h = head.data();
  if (std::memcmp(h, kMagic.data(), kMagic.size()) != 0) return fail("bad magic");
  if (const auto v = get<std::uint32_t>(h + 8); v != kChunkFileVersion)
    return fail("format version " + std::to_string(v) + ", expected " + std::to_string(kChunkFileVersion));
  if (get<std::uint32_t>(h + 12) != kChunkFileHeaderBytes) return fail("bad header size");
  if (get<std::uint32_t>(h + 76) != crc32_of(h, 76)) return fail("header checksum mismatch");
  if (get<std::uint32_t>(h + 52) != kChunkFileFlags) return fail("unknown flags");
  ChunkFileHeader out;
  out.key = {get<std::uint64_t>(h + 16), get<std::uint64_t>(h + 24)};
  out.n_tokens = get<std::int32_t>(h + 32);
  out.n_layers = get<std::int32_t>(h + 36);
  out.kv_dim = get<std::int32_t>(h + 40);
  out.position0 = get<std::int32_t>(h + 44);
  out.n_stats = get<std::uint32_t>(h + 48);
  out.raw_bytes = get<std::uint64_t>(h + 56);
  out.stored_bytes = get<std::uint64_t>(h + 64);
  out.payload_crc = get<std::uint32_t>(h + 72);
  if (out.n_tokens <= 0 || out.n_layers <= 0 || out.kv_dim <= 0 || out.position0 < 0)
    return fail("bad shape in header");
  if (out.n_stats % static_cast<std::uint32_t>(out.n_tokens) != 0) return fail("bad stats size in header");
  const auto elems = data_elements(out.n_tokens, out.n_layers, out.kv_dim);
  const std::uint64_t extra = static_cast<std::uint64_t>(out.n_tokens) + out.n_stats;
  const auto raw = elems && *elems <= std::numeric_limits<std::uint64_t>::max() - extra
                       ? mul(*elems + extra, 4)
                       : std::nullopt;
  if (!raw || *raw != out.raw_bytes) return fail("payload size disagrees with the shape");
  if (out.stored_bytes != file_size - kChunkFileHeaderBytes)
    return fail("file is " + std::to_string(file_size) + " bytes, header says " +
                std::to_string(kChunkFileHeaderBytes + out.stored_bytes) + " (truncated?)");
  // Deflate expands at most ~1032:1; a larger claim is a hostile header, not a big chunk.
  if (out.raw_bytes / 1032 > out.stored_bytes + 64) return fail("implausible payload size");
  if (out.raw_bytes > std::numeric_limits<std::size_t>::max() / 2) return fail("payload too large");
  return out;
}

std::optional<ChunkKv> decode_chunk_file(std::span<const std::byte> file, const ChunkKey& key,
                                         std::string& why) {
  const auto h = parse_chunk_header(file, file.size(), why);
  if (!h) return std::nullopt;
  if (h->key != key) {
    why = "holds key " + h->key.hex() + ", not " + key.hex();
    return std::nullopt;
  }
  const std::byte* payload = file.data() + kChunkFileHeaderBytes;
  if (crc32_of(payload, h->stored_bytes) != h->payload_crc) {
    why = "payload checksum mismatch";
    return std::nullopt;
  }
  std::vector<std::byte> raw(h->raw_bytes);
  auto got = static_cast<uLongf>(raw.size());
  const int rc = ::uncompress(reinterpret_cast<Bytef*>(raw.data()), &got,
                              reinterpret_cast<const Bytef*>(payload), static_cast<uLong>(h->stored_bytes));
  if (rc != Z_OK || got != raw.size()) {
    why = "payload does not inflate to its size (zlib " + std::to_string(rc) + ")";
    return std::nullopt;
  }
  ChunkKv kv;
  kv.n_tokens = h->n_tokens;
  kv.n_layers = h->n_layers;
  kv.kv_dim = h->kv_dim;
  kv.position0 = h->position0;
  kv.tokens.resize(static_cast<std::size_t>(h->n_tokens));
  kv.data.resize(static_cast<std::size_t>(*data_elements(h->n_tokens, h->n_layers, h->kv_dim)));
  kv.token_stats.resize(h->n_stats);
  ShuffleReader r(raw.data(), raw.size() / 4);
  r.read(std::span<TokenId>(kv.tokens));
  r.read(std::span<float>(kv.data));
  r.read(std::span<float>(kv.token_stats));
  return kv;
}

}  // namespace detail

}  // namespace chunkwise
