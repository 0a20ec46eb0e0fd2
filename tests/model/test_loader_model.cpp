// The GGUF loader on the real default model (SmolLM2-135M-Instruct Q4_1): published config numbers,
// tokenizer metadata, load time, and sampled weights against Hugging Face transformers'
// own GGUF loading (tests/data/loader_golden.json, written by tests/oracle/make_loader_golden.py).
// Without the model the tests warn "skipped" and return.
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "catch.hpp"
#include "chunkwise/model/gguf.hpp"
#include "chunkwise/model/loader.hpp"

namespace {

namespace fs = std::filesystem;

// Same rule as chunkwise::default_model_path() (model.hpp), kept local so that this test needs
// nothing but the loader.
fs::path model_path() {
  if (const char* m = std::getenv("CHUNKWISE_MODEL"); m && *m) return m;
  fs::path cache;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) {
    cache = x;
  } else if (const char* h = std::getenv("HOME"); h && *h) {
    cache = fs::path(h) / ".cache";
  }
  return cache / "chunkwise" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

struct Loaded {
  chunkwise::LoadedModel model;
  double seconds = 0;
};

// Loaded once per process: the model is 540 MB in fp32.
const Loaded* loaded() {
  static const std::unique_ptr<Loaded> cache = []() -> std::unique_ptr<Loaded> {
    const fs::path p = model_path();
    if (!fs::exists(p)) return nullptr;
    auto l = std::make_unique<Loaded>();
    const auto t0 = std::chrono::steady_clock::now();
    l->model = chunkwise::load_gguf_model(p);
    l->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return l;
  }();
  return cache.get();
}

}  // namespace

#define LOADER_REQUIRE_MODEL(var)                                          \
  const Loaded* var = loaded();                                            \
  if (var == nullptr) {                                                    \
    WARN("skipped: default model not found at " << model_path().string()); \
    return;                                                                \
  }

TEST_CASE("loader: default model config and tokenizer metadata", "[loader][model]") {
  LOADER_REQUIRE_MODEL(l);
  WARN("loaded " << l->model.source << " in " << l->seconds << " s");
  CHECK(l->seconds < 10.0);  // well under 2 s on a 2-core machine; loose against slow CI disks
  const auto& c = l->model.config;
  CHECK(c.architecture == "llama");
  CHECK(c.n_layers == 30);
  CHECK(c.hidden == 576);
  CHECK(c.ffn == 1536);
  CHECK(c.n_heads == 9);
  CHECK(c.n_kv_heads == 3);
  CHECK(c.head_dim == 64);
  CHECK(c.rope_theta == 100000.0f);
  CHECK_FALSE(c.rope_scaling.enabled);
  CHECK(c.vocab == 49152);
  CHECK(c.max_context == 8192);
  CHECK(std::abs(c.rms_eps - 1e-5f) < 1e-9f);
  CHECK(c.tied_embeddings);
  CHECK(c.bos == 1);
  CHECK(c.eos == 2);

  const auto& w = l->model.weights;
  CHECK(w.token_embedding.rows == 49152);
  CHECK(w.token_embedding.cols == 576);
  CHECK(w.output.empty());
  REQUIRE(w.layers.size() == 30);
  CHECK(w.layers[29].wq.rows == 576);
  CHECK(w.layers[29].wk.rows == 192);
  CHECK(w.layers[29].wv.rows == 192);
  CHECK(w.layers[29].wo.cols == 576);
  CHECK(w.layers[29].w_down.cols == 1536);
  CHECK(w.output_norm.size() == 576);

  const auto& t = l->model.tokenizer;
  CHECK(t.model == "gpt2");
  CHECK(t.pre == "smollm");
  CHECK(t.tokens.size() == 49152);
  CHECK(t.token_types.size() == 49152);
  CHECK(t.merges.size() == 48900);
  CHECK(t.bos == 1);
  CHECK(t.eos == 2);
  CHECK(t.unk == 0);
  CHECK(t.pad == 2);
  CHECK_FALSE(t.add_bos);
  CHECK(t.tokens[1] == "<|im_start|>");
  CHECK(t.chat_template.find("<|im_start|>") != std::string::npos);
}

TEST_CASE("loader: default model weights equal transformers' GGUF loading", "[loader][model][oracle]") {
  LOADER_REQUIRE_MODEL(l);
  const fs::path golden_path = fs::path(CHUNKWISE_TEST_DATA) / "loader_golden.json";
  std::ifstream in(golden_path);
  REQUIRE(in.good());
  const auto golden = nlohmann::json::parse(in);
  if (golden.at("model_size").get<std::uintmax_t>() != fs::file_size(model_path())) {
    WARN("skipped: " << model_path().string() << " is not the file loader_golden.json was made from ("
                     << golden.at("model_file").get<std::string>() << ")");
    return;
  }
  const auto& w = l->model.weights;
  const chunkwise::gguf::Reader reader(model_path());
  const auto* raw_q_info = reader.file().find_tensor("blk.0.attn_q.weight");
  REQUIRE(raw_q_info != nullptr);
  const std::vector<float> raw_q = chunkwise::gguf::to_float(reader.file(), reader.bytes(), *raw_q_info);

  int compared = 0;
  for (const auto& [name, entry] : golden.at("tensors").items()) {
    const auto shape = entry.at("shape").get<std::vector<std::int64_t>>();
    const float* data = nullptr;
    std::int64_t cols = 0;
    if (name == "model.layers.0.self_attn.q_proj.weight") {
      REQUIRE(shape == std::vector<std::int64_t>{w.layers[0].wq.rows, w.layers[0].wq.cols});
      data = w.layers[0].wq.data.data();
      cols = w.layers[0].wq.cols;
    } else if (name == "model.layers.0.self_attn.k_proj.weight") {
      REQUIRE(shape == std::vector<std::int64_t>{w.layers[0].wk.rows, w.layers[0].wk.cols});
      data = w.layers[0].wk.data.data();
      cols = w.layers[0].wk.cols;
    } else if (name == "model.embed_tokens.weight") {
      REQUIRE(shape == std::vector<std::int64_t>{w.token_embedding.rows, w.token_embedding.cols});
      data = w.token_embedding.data.data();
      cols = w.token_embedding.cols;
    } else if (name == "gguf:blk.0.attn_q.weight") {
      // Raw, still permuted: separates a dequantization error from a permutation error.
      REQUIRE(shape == std::vector<std::int64_t>{raw_q_info->ne[1], raw_q_info->ne[0]});
      data = raw_q.data();
      cols = raw_q_info->ne[0];
    } else {
      FAIL("unexpected golden tensor " << name);
    }
    int bad = 0;
    for (const auto& s : entry.at("samples")) {
      const auto r = s[0].get<std::int64_t>(), c = s[1].get<std::int64_t>();
      const double want = s[2].get<double>();
      const double got = data[r * cols + c];
      if (std::abs(got - want) > 1e-6) {
        if (bad++ < 5) WARN(name << "[" << r << ", " << c << "] = " << got << ", transformers " << want);
      }
      ++compared;
    }
    INFO(name);
    CHECK(bad == 0);
  }
  CHECK(compared > 150);
}
