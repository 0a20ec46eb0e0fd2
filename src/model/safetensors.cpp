#include "chunkwise/model/safetensors.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>

#include "chunkwise/core/error.hpp"
#include "detail/dequant.hpp"

namespace chunkwise::safetensors {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& message) {
  throw Error(ErrorCode::kModelFormat, "safetensors: " + message);
}

// Real headers and configs nest three or four levels; the limit keeps hostile input from
// building deep trees.
constexpr int kMaxJsonDepth = 32;

json parse_json(std::string_view text, const char* what) {
  const auto limit = [what](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth) {
      throw Error(ErrorCode::kModelFormat,
                  fmt::format("{}: JSON nested deeper than {}", what, kMaxJsonDepth));
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), limit);
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kModelFormat, fmt::format("{}: invalid JSON: {}", what, e.what()));
  }
}

constexpr std::pair<std::string_view, Dtype> kDtypes[] = {
    {"BOOL", Dtype::kBool},       {"U8", Dtype::kU8},   {"I8", Dtype::kI8},   {"F8_E5M2", Dtype::kF8_E5M2},
    {"F8_E4M3", Dtype::kF8_E4M3}, {"I16", Dtype::kI16}, {"U16", Dtype::kU16}, {"F16", Dtype::kF16},
    {"BF16", Dtype::kBF16},       {"I32", Dtype::kI32}, {"U32", Dtype::kU32}, {"F32", Dtype::kF32},
    {"F64", Dtype::kF64},         {"I64", Dtype::kI64}, {"U64", Dtype::kU64},
};

std::optional<detail::ElemType> elem_type(Dtype d) noexcept {
  switch (d) {
    case Dtype::kF32:
      return detail::ElemType::kF32;
    case Dtype::kF16:
      return detail::ElemType::kF16;
    case Dtype::kBF16:
      return detail::ElemType::kBF16;
    default:
      return std::nullopt;
  }
}

detail::ElemType require_elem_type(const TensorInfo& t) {
  const auto e = elem_type(t.dtype);
  if (!e) {
    throw Error(ErrorCode::kUnsupported,
                fmt::format("safetensors: tensor '{}' has dtype {} (supported: F32, F16, BF16)", t.name,
                            to_string(t.dtype)));
  }
  return *e;
}

std::uint64_t unsigned_of(const json& v, const std::string& what) {
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0)) {
    fail(fmt::format("{} must be a non-negative integer, got {}", what, v.dump()));
  }
  return v.get<std::uint64_t>();
}

TensorInfo tensor_info(const std::string& name, const json& v, std::uint64_t data_size) {
  if (!v.is_object()) fail(fmt::format("entry '{}' is not an object", name));
  TensorInfo t;
  t.name = name;
  const auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) fail(fmt::format("tensor '{}' has no dtype string", name));
  const auto& ds = dt->get_ref<const std::string&>();
  const auto* hit =
      std::find_if(std::begin(kDtypes), std::end(kDtypes), [&](const auto& p) { return p.first == ds; });
  if (hit == std::end(kDtypes)) {
    throw Error(ErrorCode::kUnsupported,
                fmt::format("safetensors: tensor '{}' has unknown dtype '{}'", name, ds));
  }
  t.dtype = hit->second;

  const auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) fail(fmt::format("tensor '{}' has no shape array", name));
  if (sh->size() > kMaxRank)
    fail(fmt::format("tensor '{}' has rank {} (at most {})", name, sh->size(), kMaxRank));
  std::uint64_t n = 1;
  bool overflow = false;
  for (const json& d : *sh) {
    const std::uint64_t x = unsigned_of(d, fmt::format("shape entry of tensor '{}'", name));
    if (x > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) overflow = true;
    if (x != 0 && n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / x)
      overflow = true;
    n *= x;
    t.shape.push_back(static_cast<std::int64_t>(x));
  }
  const std::uint64_t esize = dtype_size(t.dtype);
  if (overflow || n > std::numeric_limits<std::uint64_t>::max() / esize) {
    fail(fmt::format("tensor '{}' shape {} overflows", name, sh->dump()));
  }
  t.n_elements = n;

  const auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2) {
    fail(fmt::format("tensor '{}' needs data_offsets [begin, end]", name));
  }
  t.begin = unsigned_of((*off)[0], fmt::format("data_offsets of tensor '{}'", name));
  t.end = unsigned_of((*off)[1], fmt::format("data_offsets of tensor '{}'", name));
  if (t.end < t.begin)
    fail(fmt::format("tensor '{}' data_offsets [{}, {}) are reversed", name, t.begin, t.end));
  if (t.end > data_size) {
    fail(fmt::format("tensor '{}' data_offsets [{}, {}) past end of data section ({} bytes)", name, t.begin,
                     t.end, data_size));
  }
  if (t.end - t.begin != n * esize) {
    fail(fmt::format("tensor '{}' data_offsets [{}, {}) hold {} bytes but {} {} needs {}", name, t.begin,
                     t.end, t.end - t.begin, to_string(t.dtype), sh->dump(), n * esize));
  }
  return t;
}

// ---- config.json helpers -----------------------------------------------------------------------------

const json* field(const json& j, const char* key) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::optional<int> int_field(const json& j, const char* key) {
  const json* v = field(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number_integer())
    fail(fmt::format("config.json: '{}' must be an integer, got {}", key, v->dump()));
  // is_number_integer covers unsigned too; compare as signed only when it fits.
  if (v->is_number_unsigned() &&
      v->get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) {
    fail(fmt::format("config.json: '{}' = {} out of range", key, v->dump()));
  }
  const auto x = v->get<std::int64_t>();
  if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max()) {
    fail(fmt::format("config.json: '{}' = {} out of range", key, x));
  }
  return static_cast<int>(x);
}

int required_int(const json& j, const char* key) {
  const auto v = int_field(j, key);
  if (!v) fail(fmt::format("config.json: missing '{}'", key));
  return *v;
}

std::optional<double> num_field(const json& j, const char* key) {
  const json* v = field(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) fail(fmt::format("config.json: '{}' must be a number, got {}", key, v->dump()));
  return v->get<double>();
}

std::optional<std::string> str_field(const json& j, const char* key) {
  const json* v = field(j, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) fail(fmt::format("config.json: '{}' must be a string, got {}", key, v->dump()));
  return v->get<std::string>();
}

bool bool_field(const json& j, const char* key, bool fallback) {
  const json* v = field(j, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) fail(fmt::format("config.json: '{}' must be true or false, got {}", key, v->dump()));
  return v->get<bool>();
}

// A token id given as an integer or a list of integers (the first one counts).
std::int32_t token_id(const json& j, const char* key) {
  const json* v = field(j, key);
  if (v == nullptr) return -1;
  const json* x = v;
  if (v->is_array()) {
    if (v->empty()) return -1;
    x = &(*v)[0];
  }
  if (!x->is_number_integer())
    fail(fmt::format("config.json: '{}' must be an integer or list, got {}", key, v->dump()));
  const auto id = x->get<std::int64_t>();
  if (x->is_number_unsigned() || id < -1 || id > std::numeric_limits<std::int32_t>::max()) {
    if (!(x->is_number_unsigned() && x->get<std::uint64_t>() <= std::numeric_limits<std::int32_t>::max())) {
      fail(fmt::format("config.json: '{}' = {} out of range", key, x->dump()));
    }
  }
  return static_cast<std::int32_t>(id);
}

}  // namespace

std::string_view to_string(Dtype dtype) noexcept {
  for (const auto& [name, d] : kDtypes) {
    if (d == dtype) return name;
  }
  return "?";
}

std::size_t dtype_size(Dtype dtype) noexcept {
  switch (dtype) {
    case Dtype::kBool:
    case Dtype::kU8:
    case Dtype::kI8:
    case Dtype::kF8_E5M2:
    case Dtype::kF8_E4M3:
      return 1;
    case Dtype::kI16:
    case Dtype::kU16:
    case Dtype::kF16:
    case Dtype::kBF16:
      return 2;
    case Dtype::kI32:
    case Dtype::kU32:
    case Dtype::kF32:
      return 4;
    case Dtype::kF64:
    case Dtype::kI64:
    case Dtype::kU64:
      return 8;
  }
  return 1;
}

const TensorInfo* Header::find(std::string_view name) const {
  const auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                                   [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors.end() && it->name == name ? &*it : nullptr;
}

Header parse(std::span<const std::byte> bytes) {
  Header h;
  h.file_size = bytes.size();
  if (bytes.size() < 8)
    fail(fmt::format("file of {} bytes is too short for the 8-byte header length", bytes.size()));
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | std::to_integer<std::uint64_t>(bytes[static_cast<std::size_t>(i)]);
  if (n > kMaxHeaderBytes)
    fail(fmt::format("header length {} exceeds the {}-byte limit", n, kMaxHeaderBytes));
  if (n > bytes.size() - 8) {
    fail(fmt::format("header length {} runs past the end of the file (size {})", n, bytes.size()));
  }
  h.data_offset = 8 + n;
  const std::uint64_t data_size = bytes.size() - h.data_offset;
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()) + 8, static_cast<std::size_t>(n));
  const json j = parse_json(text, "safetensors header");
  if (!j.is_object()) fail("header is not a JSON object");

  for (const auto& [key, v] : j.items()) {
    if (key == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ is not an object");
      for (const auto& [mk, mv] : v.items()) {
        if (!mv.is_string()) fail(fmt::format("__metadata__ value of '{}' is not a string", mk));
        h.metadata.emplace_back(mk, mv.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(tensor_info(key, v, data_size));
  }
  // nlohmann keeps object keys sorted, but do not rely on the container choice.
  std::sort(h.tensors.begin(), h.tensors.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : h.tensors) {
    if (t.end > t.begin) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      fail(fmt::format("tensors '{}' and '{}' overlap", by_offset[i - 1]->name, by_offset[i]->name));
    }
  }
  return h;
}

std::span<const std::byte> tensor_data(const Header& header, std::span<const std::byte> bytes,
                                       const TensorInfo& t) {
  if (bytes.size() != header.file_size) {
    throw Error(ErrorCode::kInvalidArgument,
                "safetensors: tensor_data called with bytes other than the parsed image");
  }
  if (header.data_offset > bytes.size() || t.begin > t.end || t.end > bytes.size() - header.data_offset) {
    fail(fmt::format("tensor '{}' data lies outside the file (size {})", t.name, bytes.size()));
  }
  return bytes.subspan(static_cast<std::size_t>(header.data_offset + t.begin),
                       static_cast<std::size_t>(t.end - t.begin));
}

std::vector<float> to_float(const Header& header, std::span<const std::byte> bytes, const TensorInfo& t) {
  const detail::ElemType e = require_elem_type(t);
  const auto data = tensor_data(header, bytes, t);
  std::vector<float> out(static_cast<std::size_t>(t.n_elements));
  detail::dequantize(e, data, out);
  return out;
}

ModelConfig config_from_json(std::string_view json_text) {
  const json j = parse_json(json_text, "config.json");
  if (!j.is_object()) fail("config.json is not a JSON object");
  ModelConfig c;

  std::string model_type = str_field(j, "model_type").value_or("");
  if (model_type.empty()) {
    if (const json* archs = field(j, "architectures");
        archs && archs->is_array() && !archs->empty() && (*archs)[0].is_string()) {
      const auto a = (*archs)[0].get<std::string>();
      model_type = a == "LlamaForCausalLM"     ? "llama"
                   : a == "MistralForCausalLM" ? "mistral"
                   : a == "Qwen2ForCausalLM"   ? "qwen2"
                                               : a;
    }
  }
  if (model_type != "llama" && model_type != "mistral" && model_type != "qwen2") {
    throw Error(
        ErrorCode::kUnsupported,
        fmt::format("safetensors: model type '{}' is not supported (llama, mistral, qwen2)", model_type));
  }
  c.architecture = model_type;
  c.name = str_field(j, "_name_or_path").value_or("");
  for (const char* key : {"hidden_act", "hidden_activation"}) {
    if (const auto act = str_field(j, key); act && *act != "silu") {
      throw Error(ErrorCode::kUnsupported,
                  fmt::format("safetensors: activation '{}' is not supported (silu)", *act));
    }
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    if (bool_field(j, key, false)) {
      throw Error(ErrorCode::kUnsupported, fmt::format("safetensors: '{}' is not supported", key));
    }
  }

  c.n_layers = required_int(j, "num_hidden_layers");
  c.hidden = required_int(j, "hidden_size");
  c.ffn = required_int(j, "intermediate_size");
  c.n_heads = required_int(j, "num_attention_heads");
  c.n_kv_heads = int_field(j, "num_key_value_heads").value_or(c.n_heads);
  c.vocab = required_int(j, "vocab_size");
  c.max_context = required_int(j, "max_position_embeddings");
  if (const auto hd = int_field(j, "head_dim")) {
    c.head_dim = *hd;
  } else {
    if (c.n_heads <= 0 || c.hidden % c.n_heads != 0) {
      fail(fmt::format("config.json: hidden_size {} is not a multiple of num_attention_heads {}", c.hidden,
                       c.n_heads));
    }
    c.head_dim = c.hidden / c.n_heads;
  }
  // Sliding-window attention changes results once prompts pass the window.
  if (const auto sw = int_field(j, "sliding_window");
      sw && bool_field(j, "use_sliding_window", true) && *sw < c.max_context) {
    throw Error(ErrorCode::kUnsupported,
                fmt::format("safetensors: sliding-window attention (window {}) is not supported", *sw));
  }
  c.rms_eps = static_cast<float>(num_field(j, "rms_norm_eps").value_or(1e-6));

  // transformers 4.x writes rope_theta + rope_scaling; 5.x writes rope_parameters with both.
  const json* rope = field(j, "rope_parameters");
  if (rope == nullptr) rope = field(j, "rope_scaling");
  if (rope != nullptr && !rope->is_object()) fail("config.json: rope_scaling must be an object");
  std::optional<double> theta = num_field(j, "rope_theta");
  if (!theta && rope != nullptr) theta = num_field(*rope, "rope_theta");
  c.rope_theta = static_cast<float>(theta.value_or(10000.0));
  if (rope != nullptr) {
    std::optional<std::string> type = str_field(*rope, "rope_type");
    if (!type) type = str_field(*rope, "type");
    if (type == "llama3") {
      RopeScaling& s = c.rope_scaling;
      s.enabled = true;
      const auto need = [&](const char* key) {
        const auto v = num_field(*rope, key);
        if (!v) fail(fmt::format("config.json: llama3 rope scaling needs '{}'", key));
        return *v;
      };
      s.factor = static_cast<float>(need("factor"));
      s.low_freq_factor = static_cast<float>(need("low_freq_factor"));
      s.high_freq_factor = static_cast<float>(need("high_freq_factor"));
      s.original_max_position = required_int(*rope, "original_max_position_embeddings");
    } else if (type && *type != "default") {
      throw Error(ErrorCode::kUnsupported,
                  fmt::format("safetensors: RoPE scaling type '{}' is not supported", *type));
    }
  }
  c.tied_embeddings = bool_field(j, "tie_word_embeddings", false);
  c.bos = token_id(j, "bos_token_id");
  c.eos = token_id(j, "eos_token_id");
  validate(c);
  return c;
}

ModelWeights weights_from_shards(const ModelConfig& config, std::span<const Shard> shards) {
  validate(config);
  struct Where {
    const Shard* shard;
    const TensorInfo* info;
  };
  std::unordered_map<std::string_view, Where> index;
  for (const Shard& s : shards) {
    if (s.bytes.size() != s.header.file_size) {
      throw Error(ErrorCode::kInvalidArgument,
                  fmt::format("safetensors: shard '{}' bytes do not match its header", s.name));
    }
    for (const TensorInfo& t : s.header.tensors) {
      const auto [it, fresh] = index.emplace(t.name, Where{&s, &t});
      if (!fresh) {
        fail(
            fmt::format("tensor '{}' appears in both '{}' and '{}'", t.name, it->second.shard->name, s.name));
      }
    }
  }
  std::unordered_map<std::string_view, bool> used;
  const auto find = [&](const std::string& name) -> const Where& {
    const auto it = index.find(name);
    if (it == index.end()) fail(fmt::format("missing tensor '{}'", name));
    used[it->first] = true;
    return it->second;
  };
  const auto check_shape = [](const Where& w, std::initializer_list<std::int64_t> shape) {
    if (!std::equal(w.info->shape.begin(), w.info->shape.end(), shape.begin(), shape.end())) {
      fail(fmt::format("tensor '{}' in '{}' has shape [{}], expected [{}]", w.info->name, w.shard->name,
                       fmt::join(w.info->shape, ", "), fmt::join(shape, ", ")));
    }
  };
  std::vector<detail::RowJob> jobs;
  const auto matrix = [&](const std::string& name, std::int64_t rows, std::int64_t cols) {
    const Where& w = find(name);
    check_shape(w, {rows, cols});
    Matrix m(rows, cols);
    // Decoded at the end, all in one parallel region; the buffer survives moves of m.
    jobs.push_back({require_elem_type(*w.info),
                    tensor_data(w.shard->header, w.shard->bytes, *w.info),
                    rows,
                    cols,
                    m.data,
                    {}});
    return m;
  };
  const auto vec = [&](const std::string& name, std::int64_t n) {
    const Where& w = find(name);
    check_shape(w, {n});
    return to_float(w.shard->header, w.shard->bytes, *w.info);
  };

  const ModelConfig& c = config;
  // Bound n_layers by what the shards hold before sizing anything by it.
  if (index.size() < static_cast<std::size_t>(c.n_layers) * 9) {
    fail(fmt::format("{} layers need at least {} tensors, the checkpoint has {}", c.n_layers, c.n_layers * 9,
                     index.size()));
  }
  ModelWeights w;
  w.token_embedding = matrix("model.embed_tokens.weight", c.vocab, c.hidden);
  w.layers.resize(static_cast<std::size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    const auto n = [l](const char* what) { return fmt::format("model.layers.{}.{}.weight", l, what); };
    L.attn_norm = vec(n("input_layernorm"), c.hidden);
    L.wq = matrix(n("self_attn.q_proj"), c.q_dim(), c.hidden);
    L.wk = matrix(n("self_attn.k_proj"), c.kv_dim(), c.hidden);
    L.wv = matrix(n("self_attn.v_proj"), c.kv_dim(), c.hidden);
    L.wo = matrix(n("self_attn.o_proj"), c.hidden, c.q_dim());
    L.ffn_norm = vec(n("post_attention_layernorm"), c.hidden);
    L.w_gate = matrix(n("mlp.gate_proj"), c.ffn, c.hidden);
    L.w_up = matrix(n("mlp.up_proj"), c.ffn, c.hidden);
    L.w_down = matrix(n("mlp.down_proj"), c.hidden, c.ffn);
  }
  w.output_norm = vec("model.norm.weight", c.hidden);
  const bool has_head = index.contains("lm_head.weight");
  if (!c.tied_embeddings) {
    if (!has_head) fail("missing tensor 'lm_head.weight' (tie_word_embeddings is false)");
    w.output = matrix("lm_head.weight", c.vocab, c.hidden);
  }

  for (const auto& [name, where] : index) {
    if (used.contains(name)) continue;
    // transformers ties lm_head to the embedding when asked, whatever the file holds; old
    // checkpoints also saved the RoPE inverse-frequency buffer, which we recompute.
    if (name == "lm_head.weight" && c.tied_embeddings) continue;
    if (name.ends_with(".rotary_emb.inv_freq")) continue;
    throw Error(ErrorCode::kUnsupported,
                fmt::format("safetensors: tensor '{}' in '{}' is not part of the Llama mapping", name,
                            where.shard->name));
  }
  detail::dequantize_rows(jobs);
  return w;
}

}  // namespace chunkwise::safetensors
