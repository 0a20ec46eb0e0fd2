// The code of the chunkwise::Error a callable throws, or nullopt when it throws none: lets a
// test say which typed error it expects, not just that something was thrown.
#pragma once

#include <optional>

#include "chunkwise/core/error.hpp"

namespace chunkwise::test {

template <class F>
std::optional<ErrorCode> error_code(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.code();
  }
  return std::nullopt;
}

}  // namespace chunkwise::test
