// Shared by the CUDA model tests: natural text for the default model and the logits comparison
// (chunkwise::compare_logits) the GPU is checked against the CPU with.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/core/logits_agreement.hpp"
#include "chunkwise/model/model.hpp"

namespace chunkwise::cuda_test {

// README and docs of this repository: English prose with code, a few thousand tokens. The tests may
// run on another machine than the one that built them: CHUNKWISE_SOURCE_DIR names the checkout there.
inline std::vector<TokenId> natural_text(const Model& model, std::size_t n) {
  const char* env = std::getenv("CHUNKWISE_SOURCE_DIR");
  const std::filesystem::path root =
      env != nullptr && *env != '\0' ? std::filesystem::path(env)
                                     : std::filesystem::path(CHUNKWISE_TEST_DATA).parent_path().parent_path();
  std::vector<std::filesystem::path> files{root / "README.md"};
  for (const auto& e : std::filesystem::directory_iterator(root / "docs"))
    if (e.path().extension() == ".md") files.push_back(e.path());
  std::sort(files.begin() + 1, files.end());
  std::string text;
  for (const auto& f : files) {
    std::ifstream in(f);
    std::stringstream ss;
    ss << in.rdbuf();
    text.append(ss.str());
  }
  std::vector<TokenId> ids = model.tokenizer().encode(text);
  REQUIRE(ids.size() >= n);
  ids.resize(n);
  return ids;
}

using Agreement = LogitsAgreement;
inline Agreement compare(const std::vector<float>& ref, const std::vector<float>& test, int vocab) {
  return compare_logits(ref, test, vocab);
}

}  // namespace chunkwise::cuda_test
