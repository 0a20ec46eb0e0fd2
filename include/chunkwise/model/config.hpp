// Hyper-parameters of a Llama-family decoder, filled from GGUF metadata or config.json.
#pragma once

#include <cstdint>
#include <string>

namespace chunkwise {

// Llama-3 style frequency-dependent RoPE scaling ("rope_type": "llama3").
struct RopeScaling {
  bool enabled = false;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position = 8192;
};

struct ModelConfig {
  std::string architecture = "llama";
  std::string name;
  int n_layers = 0;
  int hidden = 0;
  int ffn = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int vocab = 0;
  int max_context = 0;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  float rms_eps = 1e-5f;
  bool tied_embeddings = false;
  std::int32_t bos = -1;
  std::int32_t eos = -1;

  [[nodiscard]] int q_dim() const { return n_heads * head_dim; }
  [[nodiscard]] int kv_dim() const { return n_kv_heads * head_dim; }
};

// Throws Error(kModelFormat) when the numbers are inconsistent or absurd (zero, negative,
// heads not dividing, sizes that would overflow).
void validate(const ModelConfig& config);

}  // namespace chunkwise
