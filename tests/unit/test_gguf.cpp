// GGUF reader and Llama mapping: round trips through a tiny in-test writer, the Q/K
// un-permutation, files written by llama.cpp's own `gguf` package (tests/fuzz/corpus), and hostile
// mutations that must all end in chunkwise::Error with the right code.
#include <fmt/format.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../../src/model/detail/dequant.hpp"
#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/model/gguf.hpp"
#include "chunkwise/model/loader.hpp"

namespace {

using chunkwise::Error;
using chunkwise::ErrorCode;
namespace gguf = chunkwise::gguf;
using gguf::ValueType;
using Bytes = std::vector<std::byte>;

constexpr std::uint32_t kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8, kBF16 = 30;

template <class T>
void put(Bytes& b, T v) {
  std::byte raw[sizeof(T)];
  std::memcpy(raw, &v, sizeof(T));  // the tests run on little-endian hosts, like the format
  b.insert(b.end(), raw, raw + sizeof(T));
}
void put_str(Bytes& b, std::string_view s) {
  put<std::uint64_t>(b, s.size());
  for (char c : s) b.push_back(static_cast<std::byte>(c));
}
template <class T>
void poke(Bytes& b, std::size_t pos, T v) {
  std::memcpy(b.data() + pos, &v, sizeof(T));
}

// Minimal GGUF writer; offsets and padding as llama.cpp lays them out, except that nothing
// follows the last tensor (so every truncation cuts real data).
struct Builder {
  struct Tensor {
    std::string name;
    std::vector<std::uint64_t> ne;
    std::uint32_t type;
    Bytes data;
    std::optional<std::uint64_t> offset;  // forced data offset
  };
  std::uint32_t version = 3;
  std::uint64_t alignment = 32;
  std::vector<std::pair<std::string, Bytes>> kvs;  // key -> type + payload
  std::vector<Tensor> tensors;

  // Filled by build(): where each metadata entry and tensor info starts.
  mutable std::vector<std::size_t> kv_pos, tensor_pos;

  void raw(std::string key, ValueType type, const Bytes& payload) {
    Bytes b;
    put<std::uint32_t>(b, static_cast<std::uint32_t>(type));
    b.insert(b.end(), payload.begin(), payload.end());
    kvs.emplace_back(std::move(key), std::move(b));
  }
  template <class T>
  void scalar(std::string key, ValueType type, T v) {
    Bytes p;
    put<T>(p, v);
    raw(std::move(key), type, p);
  }
  void u32(std::string key, std::uint32_t v) { scalar(std::move(key), ValueType::kUint32, v); }
  void f32(std::string key, float v) { scalar(std::move(key), ValueType::kFloat32, v); }
  void boolean(std::string key, bool v) { scalar<std::uint8_t>(std::move(key), ValueType::kBool, v ? 1 : 0); }
  void str(std::string key, std::string_view s) {
    Bytes p;
    put_str(p, s);
    raw(std::move(key), ValueType::kString, p);
  }
  void str_array(std::string key, const std::vector<std::string>& v) {
    Bytes p;
    put<std::uint32_t>(p, static_cast<std::uint32_t>(ValueType::kString));
    put<std::uint64_t>(p, v.size());
    for (const auto& s : v) put_str(p, s);
    raw(std::move(key), ValueType::kArray, p);
  }
  void i32_array(std::string key, const std::vector<std::int32_t>& v) {
    Bytes p;
    put<std::uint32_t>(p, static_cast<std::uint32_t>(ValueType::kInt32));
    put<std::uint64_t>(p, v.size());
    for (auto x : v) put(p, x);
    raw(std::move(key), ValueType::kArray, p);
  }
  void tensor(std::string name, std::vector<std::uint64_t> ne, std::uint32_t type, Bytes data) {
    tensors.push_back({std::move(name), std::move(ne), type, std::move(data), std::nullopt});
  }
  Tensor* find(std::string_view name) {
    for (auto& t : tensors) {
      if (t.name == name) return &t;
    }
    return nullptr;
  }
  void erase_kv(std::string_view key) {
    std::erase_if(kvs, [&](const auto& kv) { return kv.first == key; });
  }

  [[nodiscard]] Bytes build() const {
    Bytes b;
    for (char c : std::string_view("GGUF")) b.push_back(static_cast<std::byte>(c));
    put<std::uint32_t>(b, version);
    put<std::uint64_t>(b, tensors.size());
    put<std::uint64_t>(b, kvs.size());
    kv_pos.clear();
    tensor_pos.clear();
    for (const auto& [key, payload] : kvs) {
      kv_pos.push_back(b.size());
      put_str(b, key);
      b.insert(b.end(), payload.begin(), payload.end());
    }
    std::vector<std::uint64_t> offsets;
    std::uint64_t cur = 0;
    for (const auto& t : tensors) {
      const std::uint64_t off = (cur + alignment - 1) / alignment * alignment;
      offsets.push_back(t.offset.value_or(off));
      cur = off + t.data.size();
    }
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const auto& t = tensors[i];
      tensor_pos.push_back(b.size());
      put_str(b, t.name);
      put<std::uint32_t>(b, static_cast<std::uint32_t>(t.ne.size()));
      for (auto d : t.ne) put<std::uint64_t>(b, d);
      put<std::uint32_t>(b, t.type);
      put<std::uint64_t>(b, offsets[i]);
    }
    const std::size_t data_start = (b.size() + alignment - 1) / alignment * alignment;
    b.resize(data_start);
    cur = 0;
    for (const auto& t : tensors) {
      const std::uint64_t off = (cur + alignment - 1) / alignment * alignment;
      b.resize(data_start + off);
      b.insert(b.end(), t.data.begin(), t.data.end());
      cur = off + t.data.size();
    }
    return b;
  }
};

// Weight values k/16, k in [-8, 7]: exact in every supported type (same formula as
// tests/fuzz/corpus/make_seeds.py).
float pattern(int tid, std::int64_t r, std::int64_t c) {
  return static_cast<float>(((tid * 31 + r * 7 + c * 3) % 16) - 8) / 16.0f;
}

// Encodes row-major values (all k/16) in a ggml type, choosing scales that make it exact.
Bytes encode(std::uint32_t type, const std::vector<float>& v) {
  Bytes b;
  const auto k = [](float x) { return static_cast<int>(x * 16.0f); };
  switch (type) {
    case kF32:
      for (float x : v) put(b, x);
      break;
    case kF16:
      for (float x : v) put(b, chunkwise::detail::fp32_to_fp16(x));
      break;
    case kBF16:
      for (float x : v) put(b, static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(x) >> 16));
      break;
    case kQ8_0:
      for (std::size_t i = 0; i < v.size(); i += 32) {
        put<std::uint16_t>(b, 0x2C00);  // d = 1/16
        for (std::size_t j = 0; j < 32; ++j) put<std::int8_t>(b, static_cast<std::int8_t>(k(v[i + j])));
      }
      break;
    case kQ4_0:
    case kQ4_1:
      for (std::size_t i = 0; i < v.size(); i += 32) {
        put<std::uint16_t>(b, 0x2C00);                     // d = 1/16
        if (type == kQ4_1) put<std::uint16_t>(b, 0xB800);  // m = -1/2
        for (std::size_t j = 0; j < 16; ++j) {
          // Q4_0: (q - 8) d; Q4_1: q d - 8/16. Either way q = k + 8. Low nibble = element j.
          const int lo = k(v[i + j]) + 8, hi = k(v[i + j + 16]) + 8;
          put<std::uint8_t>(b, static_cast<std::uint8_t>(lo | (hi << 4)));
        }
      }
      break;
  }
  return b;
}

struct Tiny {
  std::string arch = "llama";
  int n_layers = 2, hidden = 32, n_heads = 4, n_kv = 2, ffn = 64, vocab = 40;
  std::uint32_t type = kF32;
  bool tied = true;
  std::uint64_t alignment = 32;
  bool permuted = true;  // store Q/K rows the way llama.cpp's converter does
  [[nodiscard]] int head_dim() const { return hidden / n_heads; }
};

// Tensor ids in write order, matching pattern()'s first argument.
int tid_embd() {
  return 1;
}
int tid_layer(int l, int k) {
  return 2 + l * 9 + k;
}  // k: 0 attn_norm, 1 q, 2 k, 3 v, 4 o, 5 ffn_norm, 6 gate, 7 up, 8 down

Builder tiny_llama(const Tiny& s) {
  Builder b;
  b.alignment = s.alignment;
  const std::string a = s.arch;
  b.str("general.architecture", a);
  b.str("general.name", "tiny");
  if (s.alignment != 32) b.u32("general.alignment", static_cast<std::uint32_t>(s.alignment));
  b.u32(a + ".block_count", s.n_layers);
  b.u32(a + ".context_length", 128);
  b.u32(a + ".embedding_length", s.hidden);
  b.u32(a + ".feed_forward_length", s.ffn);
  b.u32(a + ".attention.head_count", s.n_heads);
  b.u32(a + ".attention.head_count_kv", s.n_kv);
  b.f32(a + ".rope.freq_base", 50000.0f);
  b.f32(a + ".attention.layer_norm_rms_epsilon", 1e-5f);
  b.u32(a + ".rope.dimension_count", s.head_dim());
  b.str("tokenizer.ggml.model", "gpt2");
  b.str("tokenizer.ggml.pre", "smollm");
  std::vector<std::string> toks;
  for (int i = 0; i < s.vocab; ++i) toks.push_back(fmt::format("t{}", i));
  b.str_array("tokenizer.ggml.tokens", toks);
  std::vector<std::int32_t> types(static_cast<std::size_t>(s.vocab), 1);
  types[0] = 3;
  b.i32_array("tokenizer.ggml.token_type", types);
  b.str_array("tokenizer.ggml.merges", {"t 0", "t 1"});
  b.u32("tokenizer.ggml.bos_token_id", 1);
  b.u32("tokenizer.ggml.eos_token_id", 2);
  b.u32("tokenizer.ggml.unknown_token_id", 0);
  b.u32("tokenizer.ggml.padding_token_id", 2);
  b.boolean("tokenizer.ggml.add_bos_token", true);
  b.str("tokenizer.chat_template", "{{ x }}");

  const int hd = s.head_dim();
  // heads > 0: write HF row (h, j, i) at GGUF row (h, i, j), as llama.cpp's permute does.
  const auto matrix = [&](const std::string& name, int tid, std::int64_t rows, std::int64_t cols, int heads) {
    std::vector<float> v(static_cast<std::size_t>(rows * cols));
    for (std::int64_t g = 0; g < rows; ++g) {
      std::int64_t hf = g;
      if (heads > 0 && s.permuted) {
        const std::int64_t h = g / hd, i = (g % hd) / 2, j = g % 2;
        hf = h * hd + j * (hd / 2) + i;
      }
      for (std::int64_t c = 0; c < cols; ++c) v[static_cast<std::size_t>(g * cols + c)] = pattern(tid, hf, c);
    }
    b.tensor(name, {static_cast<std::uint64_t>(cols), static_cast<std::uint64_t>(rows)}, s.type,
             encode(s.type, v));
  };
  const auto vec = [&](const std::string& name, int tid, std::int64_t n) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = pattern(tid, i, 0);
    b.tensor(name, {static_cast<std::uint64_t>(n)}, kF32, encode(kF32, v));
  };
  matrix("token_embd.weight", tid_embd(), s.vocab, s.hidden, 0);
  for (int l = 0; l < s.n_layers; ++l) {
    const std::string p = fmt::format("blk.{}.", l);
    vec(p + "attn_norm.weight", tid_layer(l, 0), s.hidden);
    matrix(p + "attn_q.weight", tid_layer(l, 1), s.n_heads * hd, s.hidden, s.n_heads);
    matrix(p + "attn_k.weight", tid_layer(l, 2), s.n_kv * hd, s.hidden, s.n_kv);
    matrix(p + "attn_v.weight", tid_layer(l, 3), s.n_kv * hd, s.hidden, 0);
    matrix(p + "attn_output.weight", tid_layer(l, 4), s.hidden, s.n_heads * hd, 0);
    vec(p + "ffn_norm.weight", tid_layer(l, 5), s.hidden);
    matrix(p + "ffn_gate.weight", tid_layer(l, 6), s.ffn, s.hidden, 0);
    matrix(p + "ffn_up.weight", tid_layer(l, 7), s.ffn, s.hidden, 0);
    matrix(p + "ffn_down.weight", tid_layer(l, 8), s.hidden, s.ffn, 0);
  }
  const int tid_out = 2 + s.n_layers * 9;
  vec("output_norm.weight", tid_out, s.hidden);
  if (!s.tied) matrix("output.weight", tid_out + 1, s.vocab, s.hidden, 0);
  return b;
}

std::span<const std::byte> span(const Bytes& b) {
  return {b.data(), b.size()};
}

chunkwise::LoadedModel load(const Bytes& b) {
  const gguf::File f = gguf::parse(span(b));
  return gguf::to_model(f, span(b), "memory");
}

// Code of the chunkwise::Error that f throws; anything else fails the test.
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

// Counts elements differing from the expected pattern (pattern row index in HF order).
std::int64_t mismatches(const chunkwise::Matrix& m, int tid, float tol = 0.0f) {
  std::int64_t bad = 0;
  for (std::int64_t r = 0; r < m.rows; ++r) {
    for (std::int64_t c = 0; c < m.cols; ++c) {
      if (std::abs(m.row(r)[c] - pattern(tid, r, c)) > tol) ++bad;
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

void check_all_weights(const chunkwise::LoadedModel& m, const Tiny& s) {
  CHECK(mismatches(m.weights.token_embedding, tid_embd()) == 0);
  REQUIRE(m.weights.layers.size() == static_cast<std::size_t>(s.n_layers));
  for (int l = 0; l < s.n_layers; ++l) {
    const auto& L = m.weights.layers[static_cast<std::size_t>(l)];
    CHECK(mismatches(L.attn_norm, tid_layer(l, 0)) == 0);
    CHECK(mismatches(L.wq, tid_layer(l, 1)) == 0);
    CHECK(mismatches(L.wk, tid_layer(l, 2)) == 0);
    CHECK(mismatches(L.wv, tid_layer(l, 3)) == 0);
    CHECK(mismatches(L.wo, tid_layer(l, 4)) == 0);
    CHECK(mismatches(L.ffn_norm, tid_layer(l, 5)) == 0);
    CHECK(mismatches(L.w_gate, tid_layer(l, 6)) == 0);
    CHECK(mismatches(L.w_up, tid_layer(l, 7)) == 0);
    CHECK(mismatches(L.w_down, tid_layer(l, 8)) == 0);
  }
  CHECK(mismatches(m.weights.output_norm, 2 + s.n_layers * 9) == 0);
  if (!s.tied) CHECK(mismatches(m.weights.output, 2 + s.n_layers * 9 + 1) == 0);
}

Bytes read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary | std::ios::ate);
  REQUIRE(in.good());
  Bytes b(static_cast<std::size_t>(in.tellg()));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(b.size()));
  return b;
}

const std::filesystem::path kCorpus =
    std::filesystem::path(CHUNKWISE_TEST_DATA) / ".." / "fuzz" / "corpus" / "gguf";

}  // namespace

TEST_CASE("gguf: metadata of every value type round-trips", "[gguf]") {
  Builder b;
  b.scalar<std::uint8_t>("u8", ValueType::kUint8, 200);
  b.scalar<std::int8_t>("i8", ValueType::kInt8, -100);
  b.scalar<std::uint16_t>("u16", ValueType::kUint16, 60000);
  b.scalar<std::int16_t>("i16", ValueType::kInt16, -30000);
  b.scalar<std::uint32_t>("u32", ValueType::kUint32, 4000000000u);
  b.scalar<std::int32_t>("i32", ValueType::kInt32, -2000000000);
  b.scalar<float>("f32", ValueType::kFloat32, 1.5f);
  b.boolean("bool", true);
  b.str("str", "h\xC3\xA9llo");
  b.scalar<std::uint64_t>("u64", ValueType::kUint64, std::uint64_t{1} << 60);
  b.scalar<std::uint64_t>("u64max", ValueType::kUint64, ~std::uint64_t{0});
  b.scalar<std::int64_t>("i64", ValueType::kInt64, -(std::int64_t{1} << 60));
  b.scalar<double>("f64", ValueType::kFloat64, -2.25);
  b.i32_array("arr_i32", {1, -2, 3});
  b.str_array("arr_str", {"a", "bc", ""});
  {
    Bytes p;  // [[1, 2], [3]] as uint16 inner arrays
    put<std::uint32_t>(p, static_cast<std::uint32_t>(ValueType::kArray));
    put<std::uint64_t>(p, 2);
    put<std::uint32_t>(p, static_cast<std::uint32_t>(ValueType::kUint16));
    put<std::uint64_t>(p, 2);
    put<std::uint16_t>(p, 1);
    put<std::uint16_t>(p, 2);
    put<std::uint32_t>(p, static_cast<std::uint32_t>(ValueType::kUint16));
    put<std::uint64_t>(p, 1);
    put<std::uint16_t>(p, 3);
    b.raw("nested", ValueType::kArray, p);
  }
  {
    Bytes p;  // float32 and bool arrays
    put<std::uint32_t>(p, static_cast<std::uint32_t>(ValueType::kFloat32));
    put<std::uint64_t>(p, 2);
    put<float>(p, 0.25f);
    put<float>(p, -8.0f);
    b.raw("arr_f32", ValueType::kArray, p);
    Bytes q;
    put<std::uint32_t>(q, static_cast<std::uint32_t>(ValueType::kBool));
    put<std::uint64_t>(q, 3);
    for (std::uint8_t x : {1, 0, 1}) put(q, x);
    b.raw("arr_bool", ValueType::kArray, q);
    Bytes e;
    put<std::uint32_t>(e, static_cast<std::uint32_t>(ValueType::kInt64));
    put<std::uint64_t>(e, 0);
    b.raw("arr_empty", ValueType::kArray, e);
  }
  const Bytes bytes = b.build();
  const gguf::File f = gguf::parse(span(bytes));
  CHECK(f.version == 3);
  CHECK(f.metadata.size() == b.kvs.size());
  CHECK(f.tensors.empty());
  CHECK(f.metadata[0].first == "u8");  // file order kept
  CHECK(f.find("u8")->as_int() == 200);
  CHECK(f.find("u8")->type() == ValueType::kUint8);
  CHECK(f.find("i8")->as_int() == -100);
  CHECK(f.find("u16")->as_int() == 60000);
  CHECK(f.find("i16")->as_int() == -30000);
  CHECK(f.find("u32")->as_int() == 4000000000);
  CHECK(f.find("i32")->as_int() == -2000000000);
  CHECK(f.find("f32")->as_float() == 1.5);
  CHECK(f.find("f32")->type() == ValueType::kFloat32);
  CHECK(f.find("bool")->as_bool());
  CHECK(f.find("str")->as_string() == "h\xC3\xA9llo");
  CHECK(f.find("u64")->as_int() == (std::int64_t{1} << 60));
  CHECK(error_of([&] { (void)f.find("u64max")->as_int("u64max"); }) == ErrorCode::kModelFormat);
  CHECK(f.find("i64")->as_int() == -(std::int64_t{1} << 60));
  CHECK(f.find("f64")->as_float() == -2.25);
  CHECK(f.find("u32")->as_float() == 4000000000.0);  // integers read as numbers where floats are asked
  const auto& ai = f.find("arr_i32")->as_array();
  REQUIRE(ai.size() == 3);
  CHECK(ai.type == ValueType::kInt32);
  CHECK(ai.int_at(0) == 1);
  CHECK(ai.int_at(1) == -2);
  CHECK(ai.int_at(2) == 3);
  CHECK(error_of([&] { (void)ai.int_at(3); }) == ErrorCode::kModelFormat);
  const auto& as = f.find("arr_str")->as_array();
  REQUIRE(as.strings.size() == 3);
  CHECK(as.strings[1] == "bc");
  CHECK(as.strings[2].empty());
  const auto& an = f.find("nested")->as_array();
  REQUIRE(an.arrays.size() == 2);
  CHECK(an.arrays[0].as_array().int_at(1) == 2);
  CHECK(an.arrays[1].as_array().int_at(0) == 3);
  const auto& af = f.find("arr_f32")->as_array();
  CHECK(af.float_at(0) == 0.25);
  CHECK(af.float_at(1) == -8.0);
  const auto& ab = f.find("arr_bool")->as_array();
  CHECK(ab.int_at(0) == 1);
  CHECK(ab.int_at(1) == 0);
  CHECK(f.find("arr_empty")->as_array().size() == 0);
  CHECK(f.find("missing") == nullptr);
  // Type mismatches name the key.
  std::string msg;
  CHECK(error_of([&] { (void)f.find("str")->as_int("str"); }, &msg) == ErrorCode::kModelFormat);
  CHECK(msg.find("'str'") != std::string::npos);
  CHECK(error_of([&] { (void)f.find("u8")->as_string("u8"); }) == ErrorCode::kModelFormat);
  CHECK(error_of([&] { (void)f.find("u8")->as_array("u8"); }) == ErrorCode::kModelFormat);
  CHECK(error_of([&] { (void)f.find("u8")->as_bool("u8"); }) == ErrorCode::kModelFormat);
  CHECK(error_of([&] { (void)as.int_at(0); }) == ErrorCode::kModelFormat);
}

TEST_CASE("gguf: tiny llama maps onto config, weights and tokenizer", "[gguf]") {
  const Tiny s;
  const Builder b = tiny_llama(s);
  const Bytes bytes = b.build();
  const gguf::File f = gguf::parse(span(bytes));
  CHECK(f.alignment == 32);
  CHECK(f.data_offset % 32 == 0);
  CHECK(f.tensors.size() == 2 + 9 * 2);
  const gguf::TensorInfo* q = f.find_tensor("blk.1.attn_q.weight");
  REQUIRE(q != nullptr);
  CHECK(q->ne == std::vector<std::int64_t>{32, 32});
  CHECK(q->type() == gguf::TensorType::kF32);
  CHECK(q->n_bytes == 32 * 32 * 4);

  const auto m = gguf::to_model(f, span(bytes), "memory");
  const auto& c = m.config;
  CHECK(m.source == "memory");
  CHECK(c.architecture == "llama");
  CHECK(c.name == "tiny");
  CHECK(c.n_layers == 2);
  CHECK(c.hidden == 32);
  CHECK(c.ffn == 64);
  CHECK(c.n_heads == 4);
  CHECK(c.n_kv_heads == 2);
  CHECK(c.head_dim == 8);
  CHECK(c.vocab == 40);  // no vocab_size key: from token_embd
  CHECK(c.max_context == 128);
  CHECK(c.rope_theta == 50000.0f);
  CHECK(c.rms_eps == 1e-5f);
  CHECK_FALSE(c.rope_scaling.enabled);
  CHECK(c.tied_embeddings);
  CHECK(c.bos == 1);
  CHECK(c.eos == 2);
  CHECK(m.weights.output.empty());
  CHECK(&m.weights.lm_head() == &m.weights.token_embedding);

  const auto& t = m.tokenizer;
  CHECK(t.model == "gpt2");
  CHECK(t.pre == "smollm");
  REQUIRE(t.tokens.size() == 40);
  CHECK(t.tokens[39] == "t39");
  REQUIRE(t.token_types.size() == 40);
  CHECK(t.token_types[0] == 3);
  CHECK(t.token_types[1] == 1);
  CHECK(t.merges == std::vector<std::string>{"t 0", "t 1"});
  CHECK(t.bos == 1);
  CHECK(t.eos == 2);
  CHECK(t.unk == 0);
  CHECK(t.pad == 2);
  CHECK(t.add_bos);
  CHECK(t.chat_template == "{{ x }}");

  check_all_weights(m, s);
}

TEST_CASE("gguf: llama.cpp's Q/K row permutation is undone", "[gguf]") {
  const Tiny s;
  const Bytes bytes = tiny_llama(s).build();
  const gguf::File f = gguf::parse(span(bytes));
  const auto m = gguf::to_model(f, span(bytes));
  const int hd = s.head_dim(), half = hd / 2;
  // HF row h*hd + j*half + i is GGUF row h*hd + 2i + j: the first half of each head gathers the
  // even GGUF rows.
  const auto raw_q = gguf::to_float(f, span(bytes), *f.find_tensor("blk.0.attn_q.weight"));
  const auto raw_k = gguf::to_float(f, span(bytes), *f.find_tensor("blk.0.attn_k.weight"));
  const auto& L = m.weights.layers[0];
  std::int64_t bad = 0;
  for (int h = 0; h < s.n_heads; ++h) {
    for (int i = 0; i < half; ++i) {
      for (int j = 0; j < 2; ++j) {
        const std::int64_t hf = h * hd + j * half + i, g = h * hd + 2 * i + j;
        for (int col = 0; col < s.hidden; ++col) {
          if (L.wq.row(hf)[col] != raw_q[static_cast<std::size_t>(g * s.hidden + col)]) ++bad;
          if (h < s.n_kv && L.wk.row(hf)[col] != raw_k[static_cast<std::size_t>(g * s.hidden + col)]) ++bad;
        }
      }
    }
  }
  CHECK(bad == 0);
  // Concretely for head 0 of dimension 8: HF rows 0..7 come from GGUF rows 0,2,4,6,1,3,5,7.
  const int order[] = {0, 2, 4, 6, 1, 3, 5, 7};
  for (int r = 0; r < 8; ++r)
    CHECK(L.wq.row(r)[5] == raw_q[static_cast<std::size_t>(order[r] * s.hidden + 5)]);
  // V and the output projection are not permuted.
  CHECK(mismatches(L.wv, tid_layer(0, 3)) == 0);

  SECTION("qwen2 GGUFs are stored unpermuted and loaded as is") {
    Tiny q = s;
    q.arch = "qwen2";
    q.permuted = false;
    const auto mq = load(tiny_llama(q).build());
    CHECK(mq.config.architecture == "qwen2");
    check_all_weights(mq, q);
  }
  SECTION("mistral is permuted like llama") {
    Tiny q = s;
    q.arch = "mistral";
    check_all_weights(load(tiny_llama(q).build()), q);
  }
}

TEST_CASE("gguf: every supported tensor type decodes exactly", "[gguf]") {
  Tiny s;
  SECTION("F16") {
    s.type = kF16;
  }
  SECTION("BF16") {
    s.type = kBF16;
  }
  SECTION("Q8_0") {
    s.type = kQ8_0;
  }
  SECTION("Q4_0") {
    s.type = kQ4_0;
  }
  SECTION("Q4_1") {
    s.type = kQ4_1;
  }
  s.tied = false;
  const auto m = load(tiny_llama(s).build());
  CHECK_FALSE(m.config.tied_embeddings);
  check_all_weights(m, s);
}

TEST_CASE("gguf: custom alignment, files on disk, load_model dispatch", "[gguf]") {
  Tiny s;
  s.alignment = 64;
  s.n_layers = 1;
  s.tied = false;
  const Bytes bytes = tiny_llama(s).build();
  const gguf::File f = gguf::parse(span(bytes));
  CHECK(f.alignment == 64);
  CHECK(f.data_offset % 64 == 0);
  for (const auto& t : f.tensors) CHECK(t.offset % 64 == 0);

  const auto dir =
      std::filesystem::temp_directory_path() / fmt::format("chunkwise_gguf_{}", std::random_device{}());
  std::filesystem::create_directories(dir);
  const auto path = dir / "tiny.gguf";
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  }
  const gguf::Reader reader(path);
  CHECK(reader.file().tensors.size() == f.tensors.size());
  CHECK(reader.tensor_data(*reader.file().find_tensor("output_norm.weight")).size() == 32 * 4);
  const auto m1 = chunkwise::load_gguf_model(path);
  CHECK(m1.source == path.string());
  check_all_weights(m1, s);
  const auto m2 = chunkwise::load_model(path);
  CHECK(m2.config.n_layers == 1);

  CHECK(error_of([&] { (void)chunkwise::load_model(dir / "absent.gguf"); }) == ErrorCode::kIo);
  CHECK(error_of([&] { (void)chunkwise::load_gguf_model(dir); }) == ErrorCode::kIo);
  CHECK(error_of([&] { (void)chunkwise::load_gguf_model(dir / "absent.gguf"); }) == ErrorCode::kIo);
  { std::ofstream(dir / "empty.gguf").flush(); }
  CHECK(error_of([&] { (void)chunkwise::load_gguf_model(dir / "empty.gguf"); }) == ErrorCode::kModelFormat);
  std::filesystem::remove_all(dir);
}

TEST_CASE("gguf: files written by llama.cpp's gguf package", "[gguf]") {
  SECTION("metadata of every type") {
    const Bytes b = read_file(kCorpus / "metadata_all_types.gguf");
    const gguf::File f = gguf::parse(span(b));
    CHECK(f.find("general.architecture")->as_string() == "llama");
    CHECK(f.find("t.u8")->as_int() == 200);
    CHECK(f.find("t.i8")->as_int() == -100);
    CHECK(f.find("t.u16")->as_int() == 60000);
    CHECK(f.find("t.i16")->as_int() == -30000);
    CHECK(f.find("t.u32")->as_int() == 4000000000);
    CHECK(f.find("t.i32")->as_int() == -2000000000);
    CHECK(f.find("t.f32")->as_float() == 1.5);
    CHECK(f.find("t.bool")->as_bool());
    CHECK(f.find("t.str")->as_string() == "h\xC3\xA9llo");
    CHECK(f.find("t.u64")->as_int() == (std::int64_t{1} << 60));
    CHECK(f.find("t.i64")->as_int() == -(std::int64_t{1} << 60));
    CHECK(f.find("t.f64")->as_float() == -2.25);
    CHECK(f.find("t.arr_i32")->as_array().int_at(1) == -2);
    CHECK(f.find("t.arr_str")->as_array().strings == std::vector<std::string>{"a", "bc", ""});
    const auto& n = f.find("t.arr_nested")->as_array();
    REQUIRE(n.arrays.size() == 2);
    CHECK(n.arrays[0].as_array().int_at(1) == 2);
    CHECK(n.arrays[1].as_array().int_at(0) == 3);
  }
  SECTION("tiny llama, F32, Q/K permuted by llama.cpp's own permute()") {
    const Bytes b = read_file(kCorpus / "tiny_llama_f32.gguf");
    const auto m = load(b);
    Tiny s;
    s.hidden = 8;
    s.n_heads = 2;
    s.n_kv = 1;
    s.ffn = 16;
    s.vocab = 16;
    CHECK(m.config.head_dim == 4);
    CHECK(m.config.vocab == 16);
    CHECK(m.tokenizer.tokens.size() == 16);
    CHECK_FALSE(m.tokenizer.add_bos);
    check_all_weights(m, s);
  }
  SECTION("tiny llama, mixed types, alignment 64, untied") {
    const Bytes b = read_file(kCorpus / "tiny_llama_mixed.gguf");
    const gguf::File f = gguf::parse(span(b));
    CHECK(f.alignment == 64);
    CHECK(f.find_tensor("token_embd.weight")->type() == gguf::TensorType::kQ8_0);
    CHECK(f.find_tensor("blk.0.attn_v.weight")->type() == gguf::TensorType::kQ4_0);
    CHECK(f.find_tensor("blk.0.attn_output.weight")->type() == gguf::TensorType::kQ4_1);
    CHECK(f.find_tensor("blk.0.ffn_gate.weight")->type() == gguf::TensorType::kBF16);
    const auto m = gguf::to_model(f, span(b));
    const auto& L = m.weights.layers[0];
    // gguf's Q8_0 quantizer picks d = amax/127, so those values are within d/2 of the pattern;
    // the others are exact.
    const float q8_tol = 0.5f / 127.0f / 2.0f + 1e-4f;
    CHECK(mismatches(m.weights.token_embedding, tid_embd(), q8_tol) == 0);
    CHECK(mismatches(L.wq, tid_layer(0, 1)) == 0);
    CHECK(mismatches(L.wk, tid_layer(0, 2)) == 0);
    CHECK(mismatches(L.wv, tid_layer(0, 3)) == 0);
    CHECK(mismatches(L.wo, tid_layer(0, 4)) == 0);
    CHECK(mismatches(L.w_gate, tid_layer(0, 6)) == 0);
    CHECK(mismatches(L.w_up, tid_layer(0, 7)) == 0);
    CHECK(mismatches(L.w_down, tid_layer(0, 8), q8_tol) == 0);
    CHECK(mismatches(m.weights.output, 2 + 9 + 1, q8_tol) == 0);
  }
}

TEST_CASE("gguf: truncation anywhere is a model-format error", "[gguf][hostile]") {
  Tiny s;
  s.n_layers = 1;
  s.type = kQ4_0;
  const Bytes full = tiny_llama(s).build();
  const gguf::File f = gguf::parse(span(full));
  std::int64_t wrong = 0, tried = 0;
  std::string first_wrong;
  for (std::size_t n = 0; n < full.size(); n += (n < f.data_offset ? 1 : 7)) {
    const Bytes cut(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n));
    std::string msg;
    const auto code = error_of([&] { (void)load(cut); }, &msg);
    ++tried;
    if (code != ErrorCode::kModelFormat) {
      ++wrong;
      if (first_wrong.empty()) first_wrong = fmt::format("{}: {}", n, msg);
    }
  }
  INFO("first bad truncation " << first_wrong);
  CHECK(tried > 1000);
  CHECK(wrong == 0);
  std::string msg;
  (void)error_of([&] { (void)load(Bytes(full.begin(), full.end() - 1)); }, &msg);
  CHECK(msg.find("past end of file") != std::string::npos);
  CHECK(msg.find("output_norm.weight") != std::string::npos);
}

TEST_CASE("gguf: hostile headers raise Error with the right code", "[gguf][hostile]") {
  Tiny s;
  s.n_layers = 1;
  Builder b = tiny_llama(s);
  Bytes bytes = b.build();
  std::string msg;
  const auto parse_code = [&](const Bytes& x) { return error_of([&] { (void)gguf::parse(span(x)); }, &msg); };
  const auto load_code = [&](const Bytes& x) { return error_of([&] { (void)load(x); }, &msg); };

  SECTION("bad magic") {
    bytes[0] = std::byte{'X'};
    CHECK(parse_code(bytes) == ErrorCode::kModelFormat);
    CHECK(msg.find("magic") != std::string::npos);
    CHECK(parse_code(Bytes{}) == ErrorCode::kModelFormat);
  }
  SECTION("versions") {
    poke<std::uint32_t>(bytes, 4, 1);
    CHECK(parse_code(bytes) == ErrorCode::kUnsupported);
    poke<std::uint32_t>(bytes, 4, 4);
    CHECK(parse_code(bytes) == ErrorCode::kUnsupported);
    poke<std::uint32_t>(bytes, 4, 0x03000000);
    CHECK(parse_code(bytes) == ErrorCode::kUnsupported);
    CHECK(msg.find("big-endian") != std::string::npos);
    poke<std::uint32_t>(bytes, 4, 2);  // v2 has the same little-endian layout
    CHECK_NOTHROW(load(bytes));
  }
  SECTION("absurd tensor and key/value counts") {
    for (const std::uint64_t n : {std::uint64_t{1} << 62, ~std::uint64_t{0}, std::uint64_t{1000000}}) {
      Bytes x = bytes;
      poke<std::uint64_t>(x, 8, n);
      CHECK(parse_code(x) == ErrorCode::kModelFormat);
      x = bytes;
      poke<std::uint64_t>(x, 16, n);
      CHECK(parse_code(x) == ErrorCode::kModelFormat);
    }
    // A count one too high runs into the next section and must still fail cleanly.
    Bytes x = bytes;
    poke<std::uint64_t>(x, 16, b.kvs.size() + 1);
    CHECK(parse_code(x).has_value());
  }
  SECTION("string lengths past the end") {
    for (const std::uint64_t n : {std::uint64_t{1} << 40, ~std::uint64_t{0}, std::uint64_t{bytes.size()}}) {
      Bytes x = bytes;
      poke<std::uint64_t>(x, b.kv_pos[0], n);  // key length
      CHECK(parse_code(x) == ErrorCode::kModelFormat);
      x = bytes;
      poke<std::uint64_t>(x, b.tensor_pos[3], n);  // tensor name length
      CHECK(parse_code(x) == ErrorCode::kModelFormat);
    }
  }
  SECTION("unknown value types and element types") {
    Builder c = b;
    c.raw("bad.type", static_cast<ValueType>(13), Bytes(8));
    CHECK(parse_code(c.build()) == ErrorCode::kModelFormat);
    Builder d = b;
    Bytes p;
    put<std::uint32_t>(p, 99);
    put<std::uint64_t>(p, 1);
    put<std::uint64_t>(p, 0);
    d.raw("bad.elem", ValueType::kArray, p);
    CHECK(parse_code(d.build()) == ErrorCode::kModelFormat);
  }
  SECTION("absurd array lengths") {
    for (const auto elem : {ValueType::kUint8, ValueType::kString, ValueType::kArray, ValueType::kFloat64}) {
      Builder c = b;
      Bytes p;
      put<std::uint32_t>(p, static_cast<std::uint32_t>(elem));
      put<std::uint64_t>(p, std::uint64_t{1} << 61);
      c.raw("huge", ValueType::kArray, p);
      CHECK(parse_code(c.build()) == ErrorCode::kModelFormat);
    }
  }
  SECTION("nested arrays too deep") {
    const auto nested = [](int depth) {
      Bytes p;  // depth levels of single-element arrays around one uint8
      for (int i = 1; i < depth; ++i) {
        put<std::uint32_t>(p, static_cast<std::uint32_t>(ValueType::kArray));
        put<std::uint64_t>(p, 1);
      }
      put<std::uint32_t>(p, static_cast<std::uint32_t>(ValueType::kUint8));
      put<std::uint64_t>(p, 1);
      put<std::uint8_t>(p, 7);
      return p;
    };
    Builder ok = b;
    ok.raw("deep", ValueType::kArray, nested(gguf::kMaxArrayDepth));
    CHECK_NOTHROW(gguf::parse(span(ok.build())));
    Builder bad = b;
    bad.raw("deep", ValueType::kArray, nested(gguf::kMaxArrayDepth + 1));
    CHECK(parse_code(bad.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("nested") != std::string::npos);
  }
  SECTION("duplicate keys and tensor names") {
    Builder c = b;
    c.u32("llama.block_count", 1);
    CHECK(parse_code(c.build()) == ErrorCode::kModelFormat);
    Builder d = b;
    d.tensors.push_back(d.tensors.back());
    CHECK(parse_code(d.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("duplicate") != std::string::npos);
  }
  SECTION("bad alignment") {
    for (const std::uint32_t a : {0u, 3u, 48u}) {
      Builder c = b;
      c.u32("general.alignment", a);
      CHECK(parse_code(c.build()) == ErrorCode::kModelFormat);
    }
    Builder c = b;
    c.str("general.alignment", "32");
    CHECK(parse_code(c.build()) == ErrorCode::kModelFormat);
  }
  SECTION("too many dimensions, overflowing shapes, partial blocks") {
    Builder c = b;
    c.tensor("five", {1, 1, 1, 1, 1}, kF32, Bytes(4));
    CHECK(parse_code(c.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("dimensions") != std::string::npos);
    Builder d = b;
    d.tensor("huge", {std::uint64_t{1} << 32, std::uint64_t{1} << 32}, kF32, Bytes(4));
    CHECK(parse_code(d.build()) == ErrorCode::kModelFormat);
    Builder e = b;
    e.tensor("neg", {~std::uint64_t{0}}, kF32, Bytes(4));
    CHECK(parse_code(e.build()) == ErrorCode::kModelFormat);
    Builder g = b;
    g.tensor("big", {std::uint64_t{1} << 40}, kF32, Bytes(4));  // fits int64, not the file
    CHECK(parse_code(g.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("past end of file") != std::string::npos);
    Builder h = b;
    h.tensor("partial", {16}, kQ4_0, Bytes(18));
    CHECK(parse_code(h.build()) == ErrorCode::kModelFormat);
    Builder k = b;  // fuzzer finding: 2^62 elements fit int64 but 4 * 2^62 bytes wrap uint64
    k.tensor("wrap", {std::uint64_t{1} << 62}, kF32, Bytes(4));
    CHECK(parse_code(k.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("overflows") != std::string::npos);
    Builder z = b;  // fuzzer finding: an empty tensor must decode without touching null pointers
    z.tensor("empty", {0, 3}, kF32, Bytes{});
    const Bytes zb = z.build();
    const gguf::File zf = gguf::parse(span(zb));
    CHECK(gguf::to_float(zf, span(zb), *zf.find_tensor("empty")).empty());
  }
  SECTION("offsets past the end, misaligned, overlapping") {
    Builder c = b;
    c.tensors.back().offset = std::uint64_t{1} << 40;
    CHECK(parse_code(c.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("past end of file") != std::string::npos);
    CHECK(msg.find("'output_norm.weight'") != std::string::npos);
    Builder d = b;
    d.tensors.back().offset = ~std::uint64_t{0} - 31;  // aligned, and offset + size wraps
    CHECK(parse_code(d.build()) == ErrorCode::kModelFormat);
    Builder e = b;
    e.tensors.back().offset = 4;
    CHECK(parse_code(e.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("alignment") != std::string::npos);
    Builder g = b;
    g.tensors.back().offset = 0;  // lands on token_embd
    CHECK(parse_code(g.build()) == ErrorCode::kModelFormat);
    CHECK(msg.find("overlap") != std::string::npos);
  }
  SECTION("tensor types") {
    Builder c = b;
    c.tensor("odd", {4}, 99, Bytes(16));
    CHECK(parse_code(c.build()) == ErrorCode::kUnsupported);
    Builder d = b;
    d.tensor("q6k", {256}, 14, Bytes(210));  // Q6_K: parsed, bounds-checked, not dequantizable
    const Bytes db = d.build();
    const gguf::File f = gguf::parse(span(db));
    CHECK(error_of([&] { (void)gguf::to_float(f, span(db), *f.find_tensor("q6k")); }) ==
          ErrorCode::kUnsupported);
    Builder e = b;
    e.find("blk.0.attn_v.weight")->type = 6;  // Q5_0, 22 bytes per 32 elements
    e.find("blk.0.attn_v.weight")->data = Bytes(16 * 22);
    CHECK(load_code(e.build()) == ErrorCode::kUnsupported);
  }
}

TEST_CASE("gguf: model mapping rejects inconsistent models", "[gguf][hostile]") {
  Tiny s;
  s.n_layers = 2;
  const Builder base = tiny_llama(s);
  std::string msg;
  const auto load_code = [&](const Builder& x) { return error_of([&] { (void)load(x.build()); }, &msg); };

  SECTION("missing tensor") {
    Builder b = base;
    std::erase_if(b.tensors, [](const auto& t) { return t.name == "blk.1.ffn_up.weight"; });
    CHECK(load_code(b) == ErrorCode::kModelFormat);
    CHECK(msg.find("missing tensor 'blk.1.ffn_up.weight'") != std::string::npos);
  }
  SECTION("shape mismatch with config") {
    Builder b = base;
    b.find("blk.0.attn_k.weight")->ne = {32, 32};
    b.find("blk.0.attn_k.weight")->data.resize(32 * 32 * 4);
    CHECK(load_code(b) == ErrorCode::kModelFormat);
    CHECK(msg.find("blk.0.attn_k.weight") != std::string::npos);
    Builder c = base;
    c.find("blk.1.ffn_norm.weight")->ne = {8, 4};
    CHECK(load_code(c) == ErrorCode::kModelFormat);
  }
  SECTION("unsupported architecture") {
    Builder b = base;
    b.erase_kv("general.architecture");
    b.str("general.architecture", "gpt2");
    CHECK(load_code(b) == ErrorCode::kUnsupported);
    Builder c = base;
    c.erase_kv("general.architecture");
    CHECK(load_code(c) == ErrorCode::kModelFormat);
  }
  SECTION("tensors the mapping would drop") {
    Builder b = base;
    b.tensor("blk.0.attn_q.bias", {32}, kF32, Bytes(128));
    CHECK(load_code(b) == ErrorCode::kUnsupported);
    CHECK(msg.find("blk.0.attn_q.bias") != std::string::npos);
  }
  SECTION("missing and mistyped keys") {
    for (const char* key :
         {"llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
          "llama.attention.head_count", "llama.context_length", "llama.attention.layer_norm_rms_epsilon"}) {
      Builder b = base;
      b.erase_kv(key);
      CHECK(load_code(b) == ErrorCode::kModelFormat);
      CHECK(msg.find(key) != std::string::npos);
      Builder c = base;
      c.erase_kv(key);
      c.str(key, "x");
      CHECK(load_code(c) == ErrorCode::kModelFormat);
    }
  }
  SECTION("absurd or inconsistent numbers") {
    const std::pair<const char*, std::uint32_t> cases[] = {
        {"llama.block_count", 1000000},
        {"llama.block_count", 3},
        {"llama.block_count", 0},
        {"llama.attention.head_count", 0},
        {"llama.attention.head_count", 3},
        {"llama.attention.head_count_kv", 3},
        {"llama.embedding_length", 0x7FFFFFFF},
        {"llama.context_length", 0},
        {"llama.vocab_size", 41},
        {"tokenizer.ggml.bos_token_id", 40},
    };
    for (const auto& [key, v] : cases) {
      Builder b = base;
      b.erase_kv(key);
      b.u32(key, v);
      INFO(key << " = " << v);
      CHECK(load_code(b) == ErrorCode::kModelFormat);
    }
    Builder b = base;
    b.erase_kv("llama.rope.freq_base");
    b.f32("llama.rope.freq_base", -1.0f);
    CHECK(load_code(b) == ErrorCode::kModelFormat);
  }
  SECTION("features the Llama forward lacks") {
    Builder b = base;
    b.erase_kv("llama.rope.dimension_count");
    b.u32("llama.rope.dimension_count", 4);
    CHECK(load_code(b) == ErrorCode::kUnsupported);
    Builder c = base;
    c.str("llama.rope.scaling.type", "yarn");
    CHECK(load_code(c) == ErrorCode::kUnsupported);
    Builder d = base;
    d.erase_kv("llama.attention.head_count_kv");
    d.i32_array("llama.attention.head_count_kv", {2, 1});
    CHECK(load_code(d) == ErrorCode::kUnsupported);
    Builder e = base;
    e.erase_kv("llama.attention.head_count_kv");
    e.i32_array("llama.attention.head_count_kv", {2, 2});  // per-layer but uniform: fine
    CHECK_NOTHROW(load(e.build()));
  }
  SECTION("Llama-3 RoPE scaling from rope_freqs.weight") {
    // Frequencies of head_dim 8, theta 50000 have wavelengths 2pi * 50000^(i/4) = {6.3, 94, 1405,
    // 21006}. With factor 8, low 1, high 4 and original context 2000 (wavelength bounds 500 and
    // 2000): two high-frequency pairs (1), one smoothed, one low-frequency (8).
    std::vector<float> f(4);
    for (int i = 0; i < 4; ++i) {
      const double freq = 1.0 / std::pow(50000.0, 2.0 * i / 8);
      const double wl = 2 * 3.14159265358979323846 / freq;
      if (wl < 2000 / 4.0) {
        f[static_cast<std::size_t>(i)] = 1.0f;
      } else if (wl > 2000 / 1.0) {
        f[static_cast<std::size_t>(i)] = 8.0f;
      } else {
        const double smooth = (2000 / wl - 1.0) / (4.0 - 1.0);
        f[static_cast<std::size_t>(i)] = static_cast<float>(1.0 / ((1 - smooth) / 8.0 + smooth));
      }
    }
    CHECK(f[1] == 1.0f);
    CHECK(f[2] > 1.0f);
    CHECK(f[2] < 8.0f);
    CHECK(f[3] == 8.0f);
    Builder b = base;
    b.u32("llama.rope.scaling.original_context_length", 2000);
    b.tensor("rope_freqs.weight", {4}, kF32, encode(kF32, f));
    const auto m = load(b.build());
    CHECK(m.config.rope_scaling.enabled);
    CHECK(m.config.rope_scaling.factor == 8.0f);
    CHECK(m.config.rope_scaling.low_freq_factor == 1.0f);
    CHECK(m.config.rope_scaling.high_freq_factor == 4.0f);
    CHECK(m.config.rope_scaling.original_max_position == 2000);

    Builder ones = base;
    ones.tensor("rope_freqs.weight", {4}, kF32, encode(kF32, {1, 1, 1, 1}));
    CHECK_FALSE(load(ones.build()).config.rope_scaling.enabled);
    Builder odd = base;
    odd.tensor("rope_freqs.weight", {4}, kF32, encode(kF32, {1, 3, 2, 8}));
    CHECK(load_code(odd) == ErrorCode::kUnsupported);
    Builder shape = base;
    shape.tensor("rope_freqs.weight", {8}, kF32, Bytes(32));
    CHECK(load_code(shape) == ErrorCode::kModelFormat);
  }
}

TEST_CASE("gguf: random corruption never escapes as anything but Error", "[gguf][hostile]") {
  Tiny s;
  s.n_layers = 1;
  s.type = kQ4_1;
  const Builder b = tiny_llama(s);
  const Bytes full = b.build();
  const std::size_t header = b.tensor_pos.back() + 64;
  std::mt19937_64 rng(20240607);
  int ok = 0, errors = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Bytes x = full;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      // Mostly hit the header, where the structure is.
      const std::size_t pos = (rng() % 4 != 0) ? rng() % header : rng() % x.size();
      x[pos] = static_cast<std::byte>(rng() % 3 == 0 ? 0xFF : rng() & 0xFF);
    }
    if (rng() % 8 == 0) x.resize(rng() % x.size());
    try {
      (void)load(x);
      ++ok;
    } catch (const Error&) {
      ++errors;
    }
  }
  CHECK(ok + errors == 3000);
  CHECK(errors > 0);
}
