// A loaded model: configuration, fp32 weights and tokenizer, shared read-only by sessions.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "chunkwise/model/loader.hpp"
#include "chunkwise/model/tokenizer.hpp"

namespace chunkwise {

class Model {
 public:
  explicit Model(LoadedModel loaded);

  // Loads a GGUF file or a safetensors folder; throws Error on any problem with it.
  static std::shared_ptr<const Model> load(const std::filesystem::path& path);

  [[nodiscard]] const ModelConfig& config() const { return loaded_.config; }
  [[nodiscard]] const ModelWeights& weights() const { return loaded_.weights; }
  [[nodiscard]] const std::string& source() const { return loaded_.source; }
  [[nodiscard]] bool has_tokenizer() const { return tokenizer_ != nullptr; }
  // Throws Error(kTokenizer) when the model file carried none.
  [[nodiscard]] const Tokenizer& tokenizer() const;

 private:
  LoadedModel loaded_;
  std::unique_ptr<Tokenizer> tokenizer_;
};

// A short id of the model's weights and shape (16 hex digits), for caches whose entries outlive a
// process, such as ChunkStore::Config::model_id: two models get the same id only if they share
// their name, shape and a sample of about 4,096 values from every weight tensor.
[[nodiscard]] std::string model_fingerprint(const Model& model);

// The default model's location: $CHUNKWISE_MODEL, else the set-up cache
// ($XDG_CACHE_HOME or ~/.cache)/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf.
std::filesystem::path default_model_path();

}  // namespace chunkwise
