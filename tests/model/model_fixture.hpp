// The default model for the model tests, loaded once per process. Absent model: the tests say
// "skipped" and pass nothing off as checked.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string_view>

#include "catch.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise::test {

inline std::shared_ptr<const Model> default_model() {
  static const std::shared_ptr<const Model> model = [] {
    const auto path = default_model_path();
    return std::filesystem::exists(path) ? Model::load(path) : nullptr;
  }();
  return model;
}

// CHUNKWISE_TEST_FULL=1: the slowest cases run at full size (every request alone, more requests
// under KV pressure, longer prompts, every prompt); otherwise at CI size, with the same checks on
// fewer requests, positions or prompts.
inline bool full_size() {
  const char* env = std::getenv("CHUNKWISE_TEST_FULL");
  return env != nullptr && *env != '\0' && std::string_view(env) != "0";
}

// A KV budget for sessions that need no memory pressure: the default 1 GB pool is zero-filled at
// construction, about a second of page faults per session on the 2-core CI machine.
inline constexpr std::size_t kRoomyKvMb = 256;

}  // namespace chunkwise::test

// Returns from the test case when the model is missing, with a visible warning.
#define CHUNKWISE_REQUIRE_MODEL(var)                                                            \
  auto var = ::chunkwise::test::default_model();                                                \
  if (!var) {                                                                                   \
    WARN("skipped: default model not found at " << ::chunkwise::default_model_path().string()); \
    return;                                                                                     \
  }
