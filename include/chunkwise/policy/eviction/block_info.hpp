#pragma once

#include <cstdint>

namespace chunkwise {

// What an eviction policy knows about a cached block. Times come from the session's clock
// (injectable in tests), in seconds.
struct BlockInfo {
  double now_s = 0;
  int depth = 0;            // position of the block in its prefix chain (0 = first block)
  int hits = 0;             // times a lookup reused it
  int num_children = 0;     // cached blocks that extend it; only leaves (0) may be evicted
  std::int64_t tokens = 0;  // tokens it holds
};

}  // namespace chunkwise
