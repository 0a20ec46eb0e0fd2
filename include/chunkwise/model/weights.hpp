// Dense fp32 weights of a Llama-family model, in Hugging Face orientation: a linear layer
// is [out_features, in_features] row-major, and Q/K rows are in rotate-half RoPE order
// (the llama.cpp interleave permutation already undone).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "chunkwise/model/config.hpp"

namespace chunkwise {

struct Matrix {
  std::int64_t rows = 0;
  std::int64_t cols = 0;
  std::vector<float> data;  // rows * cols, row-major

  Matrix() = default;
  Matrix(std::int64_t r, std::int64_t c) : rows(r), cols(c), data(static_cast<std::size_t>(r * c)) {}
  [[nodiscard]] const float* row(std::int64_t r) const { return data.data() + r * cols; }
  [[nodiscard]] bool empty() const { return data.empty(); }
};

struct LayerWeights {
  std::vector<float> attn_norm;  // [hidden]
  Matrix wq;                     // [n_heads*head_dim, hidden]
  Matrix wk;                     // [n_kv_heads*head_dim, hidden]
  Matrix wv;                     // [n_kv_heads*head_dim, hidden]
  Matrix wo;                     // [hidden, n_heads*head_dim]
  std::vector<float> ffn_norm;   // [hidden]
  Matrix w_gate;                 // [ffn, hidden]
  Matrix w_up;                   // [ffn, hidden]
  Matrix w_down;                 // [hidden, ffn]
};

struct ModelWeights {
  Matrix token_embedding;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  std::vector<float> output_norm;  // [hidden]
  Matrix output;                   // [vocab, hidden]; empty when tied to token_embedding

  [[nodiscard]] const Matrix& lm_head() const { return output.empty() ? token_embedding : output; }
};

}  // namespace chunkwise
