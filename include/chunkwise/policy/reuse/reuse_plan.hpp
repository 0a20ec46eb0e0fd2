#pragma once

#include <cstdint>
#include <vector>

#include "chunkwise/core/types.hpp"

namespace chunkwise {

// Non-prefix KV caches of text chunks (tiers device, host, disk) arrive with the chunk-reuse
// issue; policies take it by reference so their signature does not change then.
class ChunkStore;

// A prompt as a sequence of chunks, for example a system prompt and retrieved passages.
struct PromptLayout {
  std::vector<TokenId> tokens;
  std::vector<std::int32_t> chunk_starts;  // first token of each chunk, ascending, starting at 0
};

struct ReusePlan {
  struct LoadSpan {
    std::int32_t begin = 0;  // token range of the prompt whose KV is loaded from the store
    std::int32_t end = 0;
  };
  std::vector<LoadSpan> load;
  std::vector<std::int32_t> recompute;  // positions inside loaded spans to compute again
};

}  // namespace chunkwise
