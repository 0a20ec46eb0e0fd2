#include "chunkwise/sched/session_config.hpp"

#include <string>

#include "chunkwise/core/error.hpp"

namespace chunkwise {

void validate(const SessionConfig& c) {
  auto need = [](bool ok, const std::string& what) {
    check(ok, ErrorCode::kInvalidArgument, "session config: " + what);
  };
  need(c.block_size >= 1 && c.block_size <= 1024, "block_size must be in [1, 1024]");
  need(c.kv_blocks >= 0, "kv_blocks must be >= 0");
  need(c.kv_blocks > 0 || c.kv_memory_mb > 0, "kv_memory_mb must be > 0 when kv_blocks is 0");
  need(c.max_batch_tokens >= 1, "max_batch_tokens must be >= 1");
  need(c.max_sequences >= 1, "max_sequences must be >= 1");
  need(c.host_cache_blocks >= 0, "host_cache_blocks must be >= 0");
  need(c.swap_blocks >= 0, "swap_blocks must be >= 0");
  // Shifted into bytes: 16 TiB at most, so the shift cannot overflow.
  need(c.chunk_device_mb <= (std::size_t{1} << 24), "chunk_device_mb must be <= 16777216");
  need(c.chunk_pinned_mb <= (std::size_t{1} << 24), "chunk_pinned_mb must be <= 16777216");
}

}  // namespace chunkwise
