// What an eviction policy knows about a cached KV block. The KV cache fills it in; times come
// from the session's clock (injectable in tests), in seconds.
#pragma once

#include <cstddef>
#include <cstdint>

namespace chunkwise {

struct BlockInfo {
  double now_s = 0;                // time of the event being reported
  double last_use_s = 0;           // when it was last inserted, hit or released (<= now_s)
  int depth = 0;                   // index of the block in its prefix chain (0 = first block)
  int tokens = 0;                  // tokens the block holds
  std::int64_t tokens_before = 0;  // tokens before it in its chain (what attention reads again)
  std::int64_t hits = 0;           // lookups that reused it since it was cached
  int priority = 0;                // highest priority of the requests that used it; higher = keep
  int demand = 0;                  // queued or running requests whose tokens contain this block
  std::size_t bytes = 0;           // KV bytes the block takes on the device
};

}  // namespace chunkwise
