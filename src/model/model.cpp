#include "chunkwise/model/model.hpp"

#include <cstdlib>

#include "chunkwise/core/error.hpp"

namespace chunkwise {

Model::Model(LoadedModel loaded) : loaded_(std::move(loaded)) {
  validate(loaded_.config);
  if (!loaded_.tokenizer.tokens.empty()) {
    check(static_cast<int>(loaded_.tokenizer.tokens.size()) <= loaded_.config.vocab, ErrorCode::kModelFormat,
          "tokenizer has more tokens than the model's vocabulary");
    tokenizer_ = std::make_unique<Tokenizer>(loaded_.tokenizer);
  }
}

std::shared_ptr<const Model> Model::load(const std::filesystem::path& path) {
  return std::make_shared<const Model>(load_model(path));
}

const Tokenizer& Model::tokenizer() const {
  check(tokenizer_ != nullptr, ErrorCode::kTokenizer, "model '" + loaded_.source + "' carries no tokenizer");
  return *tokenizer_;
}

std::filesystem::path default_model_path() {
  if (const char* env = std::getenv("CHUNKWISE_MODEL"); env != nullptr && *env != '\0') return env;
  std::filesystem::path cache;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    cache = xdg;
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    cache = std::filesystem::path(home) / ".cache";
  } else {
    cache = ".cache";
  }
  return cache / "chunkwise" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace chunkwise
