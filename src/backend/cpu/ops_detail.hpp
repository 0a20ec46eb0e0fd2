// Internals shared by the CPU ops (not installed).
#pragma once

#include <cstdint>

namespace chunkwise::cpu::detail {

// Threads an op should use for `work` units of roughly one multiply-add each: 1 below a size where
// waking the OpenMP team costs more than it saves, else num_threads().
int threads_for(std::int64_t work);

}  // namespace chunkwise::cpu::detail
