// The default model for the model tests, loaded once per process. Absent model: the tests say
// "skipped" and pass nothing off as checked.
#pragma once

#include <filesystem>
#include <memory>

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

}  // namespace chunkwise::test

// Returns from the test case when the model is missing, with a visible warning.
#define CHUNKWISE_REQUIRE_MODEL(var)                                                            \
  auto var = ::chunkwise::test::default_model();                                                \
  if (!var) {                                                                                   \
    WARN("skipped: default model not found at " << ::chunkwise::default_model_path().string()); \
    return;                                                                                     \
  }
