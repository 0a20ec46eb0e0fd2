#pragma once

#include <cstddef>
#include <functional>

namespace chunkwise {

struct SessionConfig {
  int block_size = 16;              // tokens per KV block
  int kv_blocks = 0;                // KV blocks in the pool; 0 = as many as kv_memory_mb holds
  std::size_t kv_memory_mb = 1024;  // KV budget when kv_blocks is 0
  int max_batch_tokens = 2048;      // tokens in one forward pass
  int max_sequences = 128;          // sequences in one forward pass
  std::function<double()> clock;    // seconds; default: steady clock from session start
};

// Throws Error(kInvalidArgument) naming the bad field.
void validate(const SessionConfig& config);

}  // namespace chunkwise
