// The chunk store's file format (docs/chunk-store.md): a fixed 80-byte little-endian header and
// a zlib-compressed payload. Encoding and checking are pure functions over bytes, so they are
// tested (and fuzzed) without a directory.
//
//   offset size  field
//   0      8     magic "CWCHUNK\0"
//   8      4     format version (1)
//   12     4     header size (80)
//   16     8     key.hi
//   24     8     key.lo
//   32     4     n_tokens          > 0
//   36     4     n_layers          > 0
//   40     4     kv_dim            > 0
//   44     4     position0         >= 0
//   48     4     n_stats           token_stats floats, a multiple of n_tokens
//   52     4     flags             1 = deflate | 2 = bytes of 4-byte words shuffled; version 1: 3
//   56     8     raw payload bytes 4 x (n_tokens + 2 n_layers n_tokens kv_dim + n_stats)
//   64     8     stored payload bytes (file size - 80)
//   72     4     CRC-32 of the stored payload
//   76     4     CRC-32 of bytes 0..75
//   80     ...   payload: tokens (int32), data (fp32), token_stats (fp32), byte-shuffled, deflated
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "chunkwise/kv/chunk_store.hpp"

namespace chunkwise::detail {

inline constexpr std::uint32_t kChunkFileVersion = 1;
inline constexpr std::size_t kChunkFileHeaderBytes = 80;
inline constexpr std::uint32_t kChunkFileFlags = 3;

struct ChunkFileHeader {
  ChunkKey key;
  std::int32_t n_tokens = 0;
  std::int32_t n_layers = 0;
  std::int32_t kv_dim = 0;
  std::int32_t position0 = 0;
  std::uint32_t n_stats = 0;
  std::uint64_t raw_bytes = 0;
  std::uint64_t stored_bytes = 0;
  std::uint32_t payload_crc = 0;
};

// The whole file for kv under key (kv must be valid). zlib level 0..9.
[[nodiscard]] std::vector<std::byte> encode_chunk_file(const ChunkKey& key, const ChunkKv& kv, int level);

// Checks the first kChunkFileHeaderBytes of a file of file_size bytes: magic, version, header
// CRC, sizes that agree with each other and with the file size. On failure: nullopt and why.
[[nodiscard]] std::optional<ChunkFileHeader> parse_chunk_header(std::span<const std::byte> head,
                                                                std::uint64_t file_size, std::string& why);

// Checks and decodes a whole file that must hold key. On failure: nullopt and why.
[[nodiscard]] std::optional<ChunkKv> decode_chunk_file(std::span<const std::byte> file, const ChunkKey& key,
                                                       std::string& why);

}  // namespace chunkwise::detail
