#include "chunkwise/model/model.hpp"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

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

std::string model_fingerprint(const Model& model) {
  std::uint64_t h = 0x9E3779B97F4A7C15ULL;
  auto mix = [&h](std::uint64_t v) {  // splitmix64 over the running state
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    h ^= h >> 30, h *= 0xBF58476D1CE4E5B9ULL, h ^= h >> 27, h *= 0x94D049BB133111EBULL, h ^= h >> 31;
  };
  auto sample = [&](std::span<const float> values) {
    mix(values.size());
    const std::size_t stride = std::max<std::size_t>(1, values.size() / 4096);
    for (std::size_t i = 0; i < values.size(); i += stride) mix(std::bit_cast<std::uint32_t>(values[i]));
  };
  const ModelConfig& c = model.config();
  for (const char ch : c.architecture + "/" + c.name) mix(static_cast<unsigned char>(ch));
  for (const int v : {c.vocab, c.hidden, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn})
    mix(static_cast<std::uint64_t>(v));
  const ModelWeights& w = model.weights();
  sample(w.token_embedding.data);
  for (const LayerWeights& l : w.layers) {
    sample(l.attn_norm), sample(l.ffn_norm);
    for (const Matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) sample(m->data);
  }
  sample(w.output_norm);
  sample(w.output.data);
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
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
