#pragma once

#include <cstdint>

namespace chunkwise {

using TokenId = std::int32_t;
using RequestId = std::uint64_t;
using BlockId = std::int32_t;

}  // namespace chunkwise
