// Plain types of the KV memory layer: configuration, the out-of-memory result, how KV bytes move,
// and the counters it reports.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

#include "chunkwise/core/types.hpp"

namespace chunkwise {

struct KvCacheConfig {
  int num_blocks = 0;
  int block_size = 16;
  bool prefix_caching = true;  // index full blocks and reuse them across requests
  int host_cache_blocks = 0;   // host-RAM tier for evicted prefix blocks (0 = none)
  int swap_blocks = 0;         // host-RAM space for swapped-out sequences (0 = no swapping)
};

// Not enough blocks, even after evicting every evictable cached block. Nothing was changed.
struct OutOfKvMemory {
  int needed = 0;
  int available = 0;
};

// How the backend moves KV bytes; the cache calls it for copy-on-write, the host tier and swap.
struct KvTransfer {
  std::size_t bytes_per_block = 0;
  std::function<void(BlockId src, BlockId dst)> copy;
  std::function<void(BlockId src, std::span<std::byte> dst)> save;
  std::function<void(BlockId dst, std::span<const std::byte> src)> load;
};

// Cumulative counters.
struct KvMetrics {
  std::int64_t prefix_queries = 0;       // lookups at admission
  std::int64_t prefix_query_tokens = 0;  // tokens those lookups covered
  std::int64_t prefix_hit_tokens = 0;    // tokens found cached (device or host tier)
  std::int64_t host_hit_tokens = 0;      // of which restored from the host tier
  std::int64_t evictions = 0;            // cached blocks dropped from the device
  std::int64_t host_saves = 0;           // evicted blocks copied to the host tier
  std::int64_t cow_copies = 0;           // blocks copied because a shared block was written
  std::int64_t swapped_out_blocks = 0;
  std::int64_t swapped_in_blocks = 0;
  [[nodiscard]] double hit_rate() const {
    return prefix_query_tokens > 0
               ? static_cast<double>(prefix_hit_tokens) / static_cast<double>(prefix_query_tokens)
               : 0.0;
  }
};

// Where the blocks are right now: free + cached + in_use = total.
struct KvUsage {
  int total = 0;
  int free = 0;
  int cached = 0;     // unreferenced, kept for the prefix cache
  int in_use = 0;     // referenced by a sequence
  int evictable = 0;  // cached blocks that are leaves now (candidates of the eviction policy)
  int host_cached = 0;
  int swap_free = 0;
};

}  // namespace chunkwise
