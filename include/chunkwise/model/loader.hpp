// Loads a Llama-family model from a GGUF file or a Hugging Face safetensors folder.
#pragma once

#include <filesystem>
#include <string>

#include "chunkwise/model/config.hpp"
#include "chunkwise/model/tokenizer_spec.hpp"
#include "chunkwise/model/weights.hpp"

namespace chunkwise {

struct LoadedModel {
  ModelConfig config;
  ModelWeights weights;
  TokenizerSpec tokenizer;  // empty tokens when the source carries no tokenizer
  std::string source;       // path it came from
};

// GGUF v3 file (F32, F16, BF16, Q8_0, Q4_0, Q4_1 dequantized to fp32 at load).
LoadedModel load_gguf_model(const std::filesystem::path& file);
// Folder with config.json, *.safetensors shards (F32, F16, BF16) and optionally tokenizer.json.
LoadedModel load_safetensors_model(const std::filesystem::path& folder);
// Dispatches on what path is: a folder -> safetensors, a file -> GGUF.
LoadedModel load_model(const std::filesystem::path& path);

}  // namespace chunkwise
