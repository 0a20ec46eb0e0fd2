// Chain hashes of full KV blocks: a block's key covers its tokens and, through the parent's key,
// every token before it, so equal keys mean equal prefixes (up to 64-bit collisions, which the
// prefix index rules out by comparing tokens). The salt separates namespaces (user, adapter).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "chunkwise/core/types.hpp"

namespace chunkwise::kv {

// splitmix64's finalizer: cheap and well mixed.
constexpr std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The key a chain starts from. Stable across processes (FNV-1a), so host and disk tiers agree.
constexpr std::uint64_t root_hash(std::string_view salt) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : salt) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return mix64(h ^ 0x6b76636861696e31ULL);
}

inline std::uint64_t block_hash(std::uint64_t parent, std::span<const TokenId> tokens) {
  std::uint64_t h = mix64(parent + 0x9e3779b97f4a7c15ULL);
  for (TokenId t : tokens) h = mix64(h ^ static_cast<std::uint32_t>(t));
  return h;
}

}  // namespace chunkwise::kv
