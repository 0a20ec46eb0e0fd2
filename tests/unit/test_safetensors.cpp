// Safetensors header parsing, config.json mapping, Hugging Face weight names, folder layouts
// (single file, index + shards, loose shards), files written by the `safetensors` package
// (tests/fuzz/corpus), and hostile headers.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/model/loader.hpp"
#include "chunkwise/model/safetensors.hpp"

namespace {

using chunkwise::Error;
using chunkwise::ErrorCode;
namespace st = chunkwise::safetensors;
namespace fs = std::filesystem;
using Bytes = std::vector<std::byte>;

template <class F>
std::optional<ErrorCode> error_of(F&& f, std::string* message = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (message) *message = e.what();
    return e.code();
  }
  return std::nullopt;
}

float pattern(int tid, std::int64_t r, std::int64_t c) {
  return static_cast<float>(((tid * 31 + r * 7 + c * 3) % 16) - 8) / 16.0f;
}

std::uint16_t half_of(float x) {
  // Exact for the k/16 pattern values: sign, exponent rebias, 10 mantissa bits.
  const std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  if ((u & 0x7FFFFFFFu) == 0) return static_cast<std::uint16_t>(u >> 16);
  const std::uint32_t exp = ((u >> 23) & 0xFF) - 127 + 15;
  return static_cast<std::uint16_t>(((u >> 16) & 0x8000u) | (exp << 10) | ((u & 0x7FFFFFu) >> 13));
}

Bytes encode(const std::string& dtype, const std::vector<float>& v) {
  Bytes b;
  for (float x : v) {
    if (dtype == "F32") {
      std::byte raw[4];
      std::memcpy(raw, &x, 4);
      b.insert(b.end(), raw, raw + 4);
    } else {
      const std::uint16_t h =
          dtype == "F16" ? half_of(x) : static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(x) >> 16);
      b.push_back(static_cast<std::byte>(h & 0xFF));
      b.push_back(static_cast<std::byte>(h >> 8));
    }
  }
  return b;
}

// Minimal safetensors writer; the header is assembled by hand so tests can break it at will.
struct Writer {
  struct Tensor {
    std::string name, dtype;
    std::vector<std::int64_t> shape;
    Bytes data;
    std::optional<std::pair<std::uint64_t, std::uint64_t>> offsets;  // forced data_offsets
  };
  std::vector<Tensor> tensors;
  std::string metadata = R"({"format":"pt"})";

  void add(std::string name, std::string dtype, std::vector<std::int64_t> shape, Bytes data) {
    tensors.push_back({std::move(name), std::move(dtype), std::move(shape), std::move(data), std::nullopt});
  }
  Tensor* find(std::string_view name) {
    for (auto& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  [[nodiscard]] std::string header() const {
    std::string h = "{";
    if (!metadata.empty()) h += "\"__metadata__\":" + metadata;
    std::uint64_t off = 0;
    for (const auto& t : tensors) {
      if (h.size() > 1) h += ",";
      const auto [b, e] = t.offsets.value_or(std::pair{off, off + t.data.size()});
      h += fmt::format(R"("{}":{{"dtype":"{}","shape":[{}],"data_offsets":[{},{}]}})", t.name, t.dtype,
                       fmt::join(t.shape, ","), b, e);
      off += t.data.size();
    }
    h += "}";
    return h;
  }
  [[nodiscard]] Bytes build() const { return assemble(header()); }
  [[nodiscard]] Bytes assemble(std::string h) const {
    while (h.size() % 8 != 0) h += ' ';
    Bytes b(8);
    const std::uint64_t n = h.size();
    std::memcpy(b.data(), &n, 8);
    for (char c : h) b.push_back(static_cast<std::byte>(c));
    for (const auto& t : tensors) b.insert(b.end(), t.data.begin(), t.data.end());
    return b;
  }
};

struct Tiny {
  int n_layers = 2, hidden = 8, n_heads = 2, n_kv = 1, ffn = 16, vocab = 16;
  std::string dtype = "F32";
  bool lm_head = false;
};

int tid_layer(int l, int k) {
  return 2 + l * 9 + k;
}

Writer tiny_weights(const Tiny& s) {
  Writer w;
  const int hd = s.hidden / s.n_heads;
  // cols == 0: a vector of rows elements.
  const auto add = [&](const std::string& name, int tid, std::int64_t rows, std::int64_t cols) {
    std::vector<float> v;
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = 0; c < std::max<std::int64_t>(cols, 1); ++c) v.push_back(pattern(tid, r, c));
    }
    w.add(name, s.dtype, cols == 0 ? std::vector<std::int64_t>{rows} : std::vector<std::int64_t>{rows, cols},
          encode(s.dtype, v));
  };
  add("model.embed_tokens.weight", 1, s.vocab, s.hidden);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    add(p + "input_layernorm.weight", tid_layer(l, 0), s.hidden, 0);
    add(p + "self_attn.q_proj.weight", tid_layer(l, 1), s.n_heads * hd, s.hidden);
    add(p + "self_attn.k_proj.weight", tid_layer(l, 2), s.n_kv * hd, s.hidden);
    add(p + "self_attn.v_proj.weight", tid_layer(l, 3), s.n_kv * hd, s.hidden);
    add(p + "self_attn.o_proj.weight", tid_layer(l, 4), s.hidden, s.n_heads * hd);
    add(p + "post_attention_layernorm.weight", tid_layer(l, 5), s.hidden, 0);
    add(p + "mlp.gate_proj.weight", tid_layer(l, 6), s.ffn, s.hidden);
    add(p + "mlp.up_proj.weight", tid_layer(l, 7), s.ffn, s.hidden);
    add(p + "mlp.down_proj.weight", tid_layer(l, 8), s.hidden, s.ffn);
  }
  add("model.norm.weight", 2 + s.n_layers * 9, s.hidden, 0);
  if (s.lm_head) add("lm_head.weight", 3 + s.n_layers * 9, s.vocab, s.hidden);
  return w;
}

std::string tiny_config(const Tiny& s, const std::string& extra = "") {
  return fmt::format(
      R"({{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":{},"intermediate_size":{},)"
      R"("num_attention_heads":{},"num_key_value_heads":{},"num_hidden_layers":{},"vocab_size":{},)"
      R"("max_position_embeddings":256,"rms_norm_eps":1e-05,"rope_theta":100000.0,"tie_word_embeddings":{},)"
      R"("bos_token_id":1,"eos_token_id":2,"hidden_act":"silu"{}}})",
      s.hidden, s.ffn, s.n_heads, s.n_kv, s.n_layers, s.vocab, s.lm_head ? "false" : "true", extra);
}

std::int64_t mismatches(const chunkwise::Matrix& m, int tid) {
  std::int64_t bad = 0;
  for (std::int64_t r = 0; r < m.rows; ++r) {
    for (std::int64_t c = 0; c < m.cols; ++c) {
      if (m.row(r)[c] != pattern(tid, r, c)) ++bad;
    }
  }
  return bad;
}
std::int64_t mismatches(const std::vector<float>& v, int tid) {
  std::int64_t bad = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] != pattern(tid, static_cast<std::int64_t>(i), 0)) ++bad;
  }
  return bad;
}

void check_weights(const chunkwise::ModelWeights& w, const Tiny& s) {
  CHECK(mismatches(w.token_embedding, 1) == 0);
  REQUIRE(w.layers.size() == static_cast<std::size_t>(s.n_layers));
  for (int l = 0; l < s.n_layers; ++l) {
    const auto& L = w.layers[static_cast<std::size_t>(l)];
    CHECK(mismatches(L.attn_norm, tid_layer(l, 0)) == 0);
    CHECK(mismatches(L.wq, tid_layer(l, 1)) == 0);  // safetensors: no permutation
    CHECK(mismatches(L.wk, tid_layer(l, 2)) == 0);
    CHECK(mismatches(L.wv, tid_layer(l, 3)) == 0);
    CHECK(mismatches(L.wo, tid_layer(l, 4)) == 0);
    CHECK(mismatches(L.ffn_norm, tid_layer(l, 5)) == 0);
    CHECK(mismatches(L.w_gate, tid_layer(l, 6)) == 0);
    CHECK(mismatches(L.w_up, tid_layer(l, 7)) == 0);
    CHECK(mismatches(L.w_down, tid_layer(l, 8)) == 0);
  }
  CHECK(mismatches(w.output_norm, 2 + s.n_layers * 9) == 0);
  if (s.lm_head) {
    CHECK(mismatches(w.output, 3 + s.n_layers * 9) == 0);
  } else {
    CHECK(w.output.empty());
  }
}

std::span<const std::byte> span(const Bytes& b) {
  return {b.data(), b.size()};
}

chunkwise::ModelWeights map(const Bytes& b, const chunkwise::ModelConfig& c) {
  const st::Shard shard{"memory", st::parse(span(b)), span(b)};
  return st::weights_from_shards(c, std::span<const st::Shard>(&shard, 1));
}

void write(const fs::path& p, const Bytes& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
void write(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}
Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary | std::ios::ate);
  REQUIRE(in.good());
  Bytes b(static_cast<std::size_t>(in.tellg()));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(b.size()));
  return b;
}

struct TempDir {
  fs::path path = fs::temp_directory_path() / fmt::format("chunkwise_st_{}", std::random_device{}());
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST_CASE("safetensors: header parse and tensor round trip", "[safetensors]") {
  Writer w;
  w.add("a", "F32", {2, 2}, encode("F32", {1.0f, -2.0f, 0.5f, 4.0f}));
  w.add("b", "F16", {3}, encode("F16", {1.0f, -0.5f, 0.25f}));
  w.add("c", "BF16", {1, 2}, encode("BF16", {-3.0f, 0.125f}));
  w.add("d", "I64", {2}, Bytes(16));
  w.add("e", "F32", {0}, Bytes{});
  const Bytes bytes = w.build();
  const st::Header h = st::parse(span(bytes));
  REQUIRE(h.tensors.size() == 5);
  CHECK(h.metadata == std::vector<std::pair<std::string, std::string>>{{"format", "pt"}});
  CHECK(h.data_offset == 8 + (w.header().size() + 7) / 8 * 8);
  const st::TensorInfo* a = h.find("a");
  REQUIRE(a != nullptr);
  CHECK(a->dtype == st::Dtype::kF32);
  CHECK(a->shape == std::vector<std::int64_t>{2, 2});
  CHECK(a->begin == 0);
  CHECK(a->end == 16);
  CHECK(st::to_float(h, span(bytes), *a) == std::vector<float>{1.0f, -2.0f, 0.5f, 4.0f});
  CHECK(st::to_float(h, span(bytes), *h.find("b")) == std::vector<float>{1.0f, -0.5f, 0.25f});
  CHECK(st::to_float(h, span(bytes), *h.find("c")) == std::vector<float>{-3.0f, 0.125f});
  CHECK(st::to_float(h, span(bytes), *h.find("e")).empty());
  CHECK(h.find("d")->dtype == st::Dtype::kI64);
  CHECK(error_of([&] { (void)st::to_float(h, span(bytes), *h.find("d")); }) == ErrorCode::kUnsupported);
  CHECK(h.find("zz") == nullptr);
  CHECK(st::dtype_size(st::Dtype::kBF16) == 2);
  CHECK(st::to_string(st::Dtype::kF8_E4M3) == "F8_E4M3");
}

TEST_CASE("safetensors: config.json of Llama-family models", "[safetensors]") {
  const Tiny s;
  SECTION("plain llama") {
    const auto c = st::config_from_json(tiny_config(s));
    CHECK(c.architecture == "llama");
    CHECK(c.n_layers == 2);
    CHECK(c.hidden == 8);
    CHECK(c.ffn == 16);
    CHECK(c.n_heads == 2);
    CHECK(c.n_kv_heads == 1);
    CHECK(c.head_dim == 4);
    CHECK(c.vocab == 16);
    CHECK(c.max_context == 256);
    CHECK(c.rope_theta == 100000.0f);
    CHECK(c.rms_eps == 1e-5f);
    CHECK(c.tied_embeddings);
    CHECK(c.bos == 1);
    CHECK(c.eos == 2);
    CHECK_FALSE(c.rope_scaling.enabled);
  }
  SECTION("llama3 rope scaling, eos list, explicit head_dim") {
    const auto c = st::config_from_json(
        R"({"model_type":"llama","hidden_size":8,"intermediate_size":16,"num_attention_heads":2,
            "num_key_value_heads":2,"num_hidden_layers":1,"vocab_size":16,"max_position_embeddings":128,
            "head_dim":8,"eos_token_id":[3,2],"bos_token_id":null,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
                            "original_max_position_embeddings":64}})");
    CHECK(c.head_dim == 8);
    CHECK(c.q_dim() == 16);
    CHECK(c.eos == 3);
    CHECK(c.bos == -1);
    CHECK(c.rms_eps == 1e-6f);  // LlamaConfig's default
    CHECK_FALSE(c.tied_embeddings);
    CHECK(c.rope_theta == 500000.0f);
    CHECK(c.rope_scaling.enabled);
    CHECK(c.rope_scaling.factor == 8.0f);
    CHECK(c.rope_scaling.low_freq_factor == 1.0f);
    CHECK(c.rope_scaling.high_freq_factor == 4.0f);
    CHECK(c.rope_scaling.original_max_position == 64);
  }
  SECTION("transformers 5 rope_parameters, architecture from the class name") {
    const auto c = st::config_from_json(
        R"({"architectures":["MistralForCausalLM"],"hidden_size":8,"intermediate_size":16,
            "num_attention_heads":2,"num_hidden_layers":1,"vocab_size":16,"max_position_embeddings":128,
            "sliding_window":null,"rope_parameters":{"rope_type":"default","rope_theta":20000.0}})");
    CHECK(c.architecture == "mistral");
    CHECK(c.n_kv_heads == 2);
    CHECK(c.rope_theta == 20000.0f);
    CHECK_FALSE(c.rope_scaling.enabled);
  }
  SECTION("rejections") {
    std::string msg;
    const auto code = [&](const std::string& j) {
      return error_of([&] { (void)st::config_from_json(j); }, &msg);
    };
    CHECK(code("not json") == ErrorCode::kModelFormat);
    CHECK(code("[1,2]") == ErrorCode::kModelFormat);
    CHECK(code(std::string(100, '[') + std::string(100, ']')) == ErrorCode::kModelFormat);
    CHECK(code(R"({"model_type":"gpt2"})") == ErrorCode::kUnsupported);
    CHECK(code(R"({"model_type":"llama","hidden_size":8})") == ErrorCode::kModelFormat);
    CHECK(msg.find("num_hidden_layers") != std::string::npos);
    Tiny t = s;
    const auto with = [&](const std::string& key, const std::string& value) {
      std::string j = tiny_config(t);
      const auto k = j.find("\"" + key + "\":");
      if (k == std::string::npos) return j.substr(0, j.size() - 1) + ",\"" + key + "\":" + value + "}";
      const auto v = k + key.size() + 3;
      const auto end = j.find_first_of(",}", v);
      return j.substr(0, v) + value + j.substr(end);
    };
    CHECK(code(with("hidden_size", "8.5")) == ErrorCode::kModelFormat);
    CHECK(code(with("hidden_size", "\"8\"")) == ErrorCode::kModelFormat);
    CHECK(code(with("hidden_size", "-8")) == ErrorCode::kModelFormat);
    CHECK(code(with("hidden_size", "99999999999")) == ErrorCode::kModelFormat);
    CHECK(code(with("num_hidden_layers", "0")) == ErrorCode::kModelFormat);
    CHECK(code(with("num_key_value_heads", "3")) == ErrorCode::kModelFormat);
    CHECK(code(with("hidden_size", "9")) == ErrorCode::kModelFormat);  // not a multiple of the heads
    CHECK(code(with("rms_norm_eps", "\"small\"")) == ErrorCode::kModelFormat);
    CHECK(code(with("tie_word_embeddings", "1")) == ErrorCode::kModelFormat);
    CHECK(code(with("eos_token_id", "16")) == ErrorCode::kModelFormat);
    CHECK(code(with("eos_token_id", "\"2\"")) == ErrorCode::kModelFormat);
    CHECK(code(with("hidden_act", "\"gelu\"")) == ErrorCode::kUnsupported);
    CHECK(code(with("attention_bias", "true")) == ErrorCode::kUnsupported);
    CHECK(code(with("sliding_window", "128")) == ErrorCode::kUnsupported);
    CHECK(code(with("rope_scaling", R"({"rope_type":"yarn","factor":4.0})")) == ErrorCode::kUnsupported);
    CHECK(code(with("rope_scaling", R"({"rope_type":"llama3","factor":4.0})")) == ErrorCode::kModelFormat);
    CHECK(code(with("rope_scaling", "3")) == ErrorCode::kModelFormat);
    CHECK_NOTHROW(st::config_from_json(with("sliding_window", "4096")));  // window >= context: no effect
  }
}

TEST_CASE("safetensors: Hugging Face weight names map onto ModelWeights", "[safetensors]") {
  Tiny s;
  SECTION("F32") {
    s.dtype = "F32";
  }
  SECTION("F16") {
    s.dtype = "F16";
  }
  SECTION("BF16, untied") {
    s.dtype = "BF16";
    s.lm_head = true;
  }
  const auto c = st::config_from_json(tiny_config(s));
  check_weights(map(tiny_weights(s).build(), c), s);
}

TEST_CASE("safetensors: weight mapping rejects inconsistent checkpoints", "[safetensors][hostile]") {
  const Tiny s;
  const auto c = st::config_from_json(tiny_config(s));
  std::string msg;
  const auto code = [&](const Writer& w, const chunkwise::ModelConfig& cfg) {
    return error_of([&] { (void)map(w.build(), cfg); }, &msg);
  };
  SECTION("missing tensor") {
    Writer w = tiny_weights(s);
    std::erase_if(w.tensors, [](const auto& t) { return t.name == "model.layers.1.mlp.up_proj.weight"; });
    CHECK(code(w, c) == ErrorCode::kModelFormat);
    CHECK(msg.find("model.layers.1.mlp.up_proj.weight") != std::string::npos);
  }
  SECTION("shape mismatch") {
    Writer w = tiny_weights(s);
    w.find("model.layers.0.self_attn.k_proj.weight")->shape = {2, 8};
    CHECK(code(w, c) == ErrorCode::kModelFormat);
    CHECK(msg.find("k_proj") != std::string::npos);
  }
  SECTION("untied config without lm_head") {
    auto untied = c;
    untied.tied_embeddings = false;
    CHECK(code(tiny_weights(s), untied) == ErrorCode::kModelFormat);
    CHECK(msg.find("lm_head") != std::string::npos);
  }
  SECTION("tensors that would be dropped, and ones that may be") {
    Writer w = tiny_weights(s);
    w.add("model.layers.0.self_attn.q_proj.bias", "F32", {8}, Bytes(32));
    CHECK(code(w, c) == ErrorCode::kUnsupported);
    Writer ok = tiny_weights(s);
    ok.add("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {2}, Bytes(8));
    ok.add("lm_head.weight", "F32", {16, 8}, Bytes(16 * 8 * 4));  // tied: transformers ignores it
    CHECK_NOTHROW(map(ok.build(), c));
  }
  SECTION("unsupported dtype") {
    Writer w = tiny_weights(s);
    auto* t = w.find("model.norm.weight");
    t->dtype = "I32";
    CHECK(code(w, c) == ErrorCode::kUnsupported);
  }
  SECTION("a tensor in two shards") {
    const Bytes b = tiny_weights(s).build();
    const st::Shard one{"one", st::parse(span(b)), span(b)};
    const st::Shard shards[] = {one, {"two", one.header, one.bytes}};
    CHECK(error_of([&] { (void)st::weights_from_shards(c, shards); }, &msg) == ErrorCode::kModelFormat);
    CHECK(msg.find("both") != std::string::npos);
  }
}

TEST_CASE("safetensors: hostile headers raise Error", "[safetensors][hostile]") {
  const Tiny s;
  const Writer base = tiny_weights(s);
  const Bytes good = base.build();
  std::string msg;
  const auto code = [&](const Bytes& b) { return error_of([&] { (void)st::parse(span(b)); }, &msg); };
  const auto code_h = [&](const std::string& header) { return code(base.assemble(header)); };

  CHECK(code(Bytes(7)) == ErrorCode::kModelFormat);
  SECTION("absurd or short header lengths") {
    for (const std::uint64_t n :
         {std::uint64_t{1} << 40, ~std::uint64_t{0}, std::uint64_t{good.size()}, st::kMaxHeaderBytes + 8}) {
      Bytes b = good;
      std::memcpy(b.data(), &n, 8);
      CHECK(code(b) == ErrorCode::kModelFormat);
    }
    CHECK(msg.find("header length") != std::string::npos);
  }
  SECTION("not JSON, or not the expected JSON") {
    CHECK(code_h("{\"a\":") == ErrorCode::kModelFormat);
    CHECK(code_h("\xFF\xFE garbage") == ErrorCode::kModelFormat);
    CHECK(code_h("[1,2,3]") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":3})") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":{"shape":[1],"data_offsets":[0,4]}})") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":{"dtype":"F32","shape":[1]}})") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}})") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"__metadata__":{"k":1}})") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"__metadata__":[]})") == ErrorCode::kModelFormat);
    CHECK(code_h("{\"a\":" + std::string(5000, '[') + std::string(5000, ']') + "}") ==
          ErrorCode::kModelFormat);
    CHECK(msg.find("nested") != std::string::npos);
  }
  SECTION("dtypes and shapes") {
    CHECK(code_h(R"({"a":{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}})") == ErrorCode::kUnsupported);
    CHECK(code_h(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})") == ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})") ==
          ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,4]}})") ==
          ErrorCode::kModelFormat);
    CHECK(code_h(R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,4]}})") ==
          ErrorCode::kModelFormat);
  }
  SECTION("data_offsets") {
    Writer w = base;
    w.tensors[0].offsets = std::pair<std::uint64_t, std::uint64_t>{8, 4};
    CHECK(code(w.build()) == ErrorCode::kModelFormat);
    w.tensors[0].offsets = std::pair<std::uint64_t, std::uint64_t>{0, 4};  // dtype * shape needs 512
    CHECK(code(w.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("needs") != std::string::npos);
    w.tensors[0].offsets =
        std::pair<std::uint64_t, std::uint64_t>{~std::uint64_t{0} - 511, ~std::uint64_t{0}};
    CHECK(code(w.build()) == ErrorCode::kModelFormat);
    w.tensors[0].offsets = std::pair<std::uint64_t, std::uint64_t>{1 << 20, (1 << 20) + 512};
    CHECK(code(w.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("past end") != std::string::npos);
    Writer o = base;
    o.tensors[1].offsets = std::pair<std::uint64_t, std::uint64_t>{0, o.tensors[1].data.size()};
    CHECK(code(o.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("overlap") != std::string::npos);
  }
  SECTION("truncation anywhere") {
    const auto c = st::config_from_json(tiny_config(s));
    std::int64_t wrong = 0;
    for (std::size_t n = 0; n < good.size(); ++n) {
      const Bytes cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
      if (error_of([&] { (void)map(cut, c); }) != ErrorCode::kModelFormat) ++wrong;
    }
    CHECK(wrong == 0);
  }
  SECTION("random corruption") {
    const auto c = st::config_from_json(tiny_config(s));
    std::mt19937_64 rng(7);
    const std::size_t header_end = 8 + base.header().size();
    int errors = 0;
    for (int iter = 0; iter < 2000; ++iter) {
      Bytes b = good;
      for (int k = 0, n = 1 + static_cast<int>(rng() % 3); k < n; ++k) {
        b[rng() % header_end] = static_cast<std::byte>(rng() & 0xFF);
      }
      try {
        (void)map(b, c);
      } catch (const Error&) {
        ++errors;
      }
    }
    CHECK(errors > 0);
  }
}

TEST_CASE("safetensors: model folders", "[safetensors]") {
  TempDir dir;
  Tiny s;
  s.lm_head = true;
  const Writer w = tiny_weights(s);
  write(dir.path / "config.json", tiny_config(s));
  std::string msg;

  SECTION("single model.safetensors, via load_model") {
    write(dir.path / "model.safetensors", w.build());
    const auto m = chunkwise::load_model(dir.path);
    CHECK(m.source == dir.path.string());
    CHECK(m.config.n_layers == 2);
    CHECK_FALSE(m.config.tied_embeddings);
    CHECK(m.tokenizer.tokens.empty());
    check_weights(m.weights, s);
  }
  SECTION("index.json with shards") {
    Writer a, b;
    std::string map_json = "{\"metadata\":{},\"weight_map\":{";
    for (std::size_t i = 0; i < w.tensors.size(); ++i) {
      (i % 2 ? a : b).tensors.push_back(w.tensors[i]);
      map_json += (i ? "," : "") + ("\"" + w.tensors[i].name + "\":\"") +
                  (i % 2 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors") + "\"";
    }
    map_json += "}}";
    write(dir.path / "model-00001-of-00002.safetensors", a.build());
    write(dir.path / "model-00002-of-00002.safetensors", b.build());
    write(dir.path / "model.safetensors.index.json", map_json);
    check_weights(chunkwise::load_safetensors_model(dir.path).weights, s);

    // The index must be honest and must not point outside the folder.
    std::string lie = map_json;
    lie.replace(lie.find("model-00002-of-00002"), 20, "model-00001-of-00002");
    write(dir.path / "model.safetensors.index.json", lie);
    CHECK(error_of([&] { (void)chunkwise::load_safetensors_model(dir.path); }, &msg) ==
          ErrorCode::kModelFormat);
    std::string escape = map_json;
    escape.replace(escape.find("model-00002-of-00002.safetensors"), 32,
                   "../model-00002-of-00002.safetensors");
    write(dir.path / "model.safetensors.index.json", escape);
    CHECK(error_of([&] { (void)chunkwise::load_safetensors_model(dir.path); }, &msg) ==
          ErrorCode::kModelFormat);
    write(dir.path / "model.safetensors.index.json", std::string("{\"weight_map\": 3}"));
    CHECK(error_of([&] { (void)chunkwise::load_safetensors_model(dir.path); }) == ErrorCode::kModelFormat);
    write(dir.path / "model.safetensors.index.json", std::string("{"));
    CHECK(error_of([&] { (void)chunkwise::load_safetensors_model(dir.path); }) == ErrorCode::kModelFormat);
  }
  SECTION("loose shards without an index") {
    Writer a, b;
    for (std::size_t i = 0; i < w.tensors.size(); ++i) (i < 7 ? a : b).tensors.push_back(w.tensors[i]);
    write(dir.path / "part-a.safetensors", a.build());
    write(dir.path / "part-b.safetensors", b.build());
    check_weights(chunkwise::load_safetensors_model(dir.path).weights, s);
  }
  SECTION("missing pieces") {
    CHECK(error_of([&] { (void)chunkwise::load_safetensors_model(dir.path); }) ==
          ErrorCode::kIo);  // no shards
    fs::remove(dir.path / "config.json");
    write(dir.path / "model.safetensors", w.build());
    CHECK(error_of([&] { (void)chunkwise::load_safetensors_model(dir.path); }) == ErrorCode::kIo);
    CHECK(error_of([&] { (void)chunkwise::load_safetensors_model(dir.path / "nope"); }) == ErrorCode::kIo);
    write(dir.path / "config.json", std::string("{\"model_type\": \"llama\""));
    CHECK(error_of([&] { (void)chunkwise::load_safetensors_model(dir.path); }) == ErrorCode::kModelFormat);
  }
}

TEST_CASE("safetensors: files written by the safetensors package", "[safetensors]") {
  const fs::path corpus = fs::path(CHUNKWISE_TEST_DATA) / ".." / "fuzz" / "corpus" / "safetensors";
  std::ifstream cfg_in(corpus / "config.json");
  REQUIRE(cfg_in.good());
  const std::string cfg_text((std::istreambuf_iterator<char>(cfg_in)), std::istreambuf_iterator<char>());
  const auto c = st::config_from_json(cfg_text);
  CHECK(c.rope_scaling.enabled);
  CHECK(c.rope_scaling.original_max_position == 64);
  CHECK(c.eos == 2);
  Tiny s;
  s.n_layers = 1;
  for (const char* file : {"tiny_f32.safetensors", "tiny_f16.safetensors"}) {
    INFO(file);
    const Bytes b = read_file(corpus / file);
    const st::Header h = st::parse(span(b));
    CHECK(h.metadata == std::vector<std::pair<std::string, std::string>>{{"format", "pt"}});
    check_weights(map(b, c), s);
  }
}
