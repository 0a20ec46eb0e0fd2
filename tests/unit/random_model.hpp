// Random inputs for the unit tests: uniform vectors, and a tiny random Llama model in memory (no
// file) for tests of a backend's forward wiring.
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "chunkwise/model/model.hpp"

namespace chunkwise::test {

inline std::vector<float> random_vector(std::size_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// hidden 64, 6 query / 2 KV heads of 16, MLP 96, vocabulary 40.
inline std::shared_ptr<const Model> tiny_model(std::mt19937& rng, int n_layers) {
  LoadedModel m;
  ModelConfig& c = m.config;
  c.name = "tiny";
  c.n_layers = n_layers;
  c.hidden = 64;
  c.ffn = 96;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.vocab = 40;
  c.max_context = 4096;
  auto matrix = [&](std::int64_t rows, std::int64_t cols, float range) {
    Matrix w(rows, cols);
    w.data = random_vector(static_cast<std::size_t>(rows * cols), rng, -range, range);
    return w;
  };
  m.weights.token_embedding = matrix(c.vocab, c.hidden, 1.0f);
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights L;
    L.attn_norm.assign(static_cast<std::size_t>(c.hidden), 1.0f);
    L.ffn_norm.assign(static_cast<std::size_t>(c.hidden), 1.0f);
    L.wq = matrix(c.q_dim(), c.hidden, 0.4f);
    L.wk = matrix(c.kv_dim(), c.hidden, 0.4f);
    L.wv = matrix(c.kv_dim(), c.hidden, 0.3f);
    L.wo = matrix(c.hidden, c.q_dim(), 0.2f);
    L.w_gate = matrix(c.ffn, c.hidden, 0.2f);
    L.w_up = matrix(c.ffn, c.hidden, 0.2f);
    L.w_down = matrix(c.hidden, c.ffn, 0.2f);
    m.weights.layers.push_back(std::move(L));
  }
  m.weights.output_norm.assign(static_cast<std::size_t>(c.hidden), 1.0f);
  m.source = "random";
  return std::make_shared<const Model>(std::move(m));
}

}  // namespace chunkwise::test
