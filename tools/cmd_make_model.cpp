// `chunkwise make-model`: writes a Hugging Face style Llama checkpoint folder (config.json and
// safetensors shards) with random weights of a known shape, for benchmarks and tests that need a
// model of a given size and no download. Weights are normal(0, 0.02), norms 1.0, deterministic
// from --seed; shards are streamed to disk, so an 8B model never sits in memory.
//
// config.json carries no eos_token_id unless --with-eos is given: the loaded model then has no
// end-of-sequence token, so every request of a benchmark generates exactly max_tokens tokens.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "chunkwise/core/error.hpp"
#include "commands.hpp"
#include "safetensors_writer.hpp"

namespace chunkwise::cli {

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Shape {
  const char* name;
  int layers, hidden, ffn, heads, kv_heads, head_dim, vocab, max_positions;
  double rope_theta;
  bool tied;
  bool llama3_rope;  // Llama-3 RoPE scaling: factor 8, low 1, high 4, original context 8192
  int bos, eos;
};

constexpr Shape kShapes[] = {
    {"llama3-8b", 32, 4096, 14336, 32, 8, 128, 128256, 131072, 500000.0, false, true, 128000, 128001},
    {"llama3-1b", 16, 2048, 8192, 32, 8, 64, 128256, 131072, 500000.0, true, true, 128000, 128001},
    {"smollm2-135m", 30, 576, 1536, 9, 3, 64, 49152, 8192, 100000.0, true, false, 1, 2},
    {"tiny", 2, 64, 128, 4, 2, 16, 256, 4096, 10000.0, false, false, 0, 1},
};

std::vector<SyntheticTensor> tensor_list(const Shape& s) {
  constexpr float kStd = 0.02f;
  const std::int64_t h = s.hidden, q = std::int64_t{s.heads} * s.head_dim,
                     kv = std::int64_t{s.kv_heads} * s.head_dim;
  std::vector<SyntheticTensor> t;
  t.push_back({"model.embed_tokens.weight", {s.vocab, h}, kStd, 0});
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.push_back({p + "input_layernorm.weight", {h}, 0, 1.0f});
    t.push_back({p + "self_attn.q_proj.weight", {q, h}, kStd, 0});
    t.push_back({p + "self_attn.k_proj.weight", {kv, h}, kStd, 0});
    t.push_back({p + "self_attn.v_proj.weight", {kv, h}, kStd, 0});
    t.push_back({p + "self_attn.o_proj.weight", {h, q}, kStd, 0});
    t.push_back({p + "post_attention_layernorm.weight", {h}, 0, 1.0f});
    t.push_back({p + "mlp.gate_proj.weight", {s.ffn, h}, kStd, 0});
    t.push_back({p + "mlp.up_proj.weight", {s.ffn, h}, kStd, 0});
    t.push_back({p + "mlp.down_proj.weight", {h, s.ffn}, kStd, 0});
  }
  t.push_back({"model.norm.weight", {h}, 0, 1.0f});
  if (!s.tied) t.push_back({"lm_head.weight", {s.vocab, h}, kStd, 0});
  return t;
}

json config_json(const Shape& s, OutDtype dtype, std::uint64_t seed, bool with_eos) {
  const char* torch_dtype = dtype == OutDtype::kBF16  ? "bfloat16"
                            : dtype == OutDtype::kF16 ? "float16"
                                                      : "float32";
  json c{{"architectures", {"LlamaForCausalLM"}},
         {"model_type", "llama"},
         {"_name_or_path", std::string("chunkwise-make-model/") + s.name},
         {"hidden_act", "silu"},
         {"hidden_size", s.hidden},
         {"intermediate_size", s.ffn},
         {"num_hidden_layers", s.layers},
         {"num_attention_heads", s.heads},
         {"num_key_value_heads", s.kv_heads},
         {"head_dim", s.head_dim},
         {"vocab_size", s.vocab},
         {"max_position_embeddings", s.max_positions},
         {"rope_theta", s.rope_theta},
         {"rope_scaling", nullptr},
         {"rms_norm_eps", 1e-5},
         {"tie_word_embeddings", s.tied},
         {"attention_bias", false},
         {"mlp_bias", false},
         {"attention_dropout", 0.0},
         {"initializer_range", 0.02},
         {"pretraining_tp", 1},
         {"use_cache", true},
         {"bos_token_id", s.bos},
         {"eos_token_id", with_eos ? json(s.eos) : json(nullptr)},
         {"torch_dtype", torch_dtype},
         {"chunkwise_make_model",
          {{"shape", s.name}, {"seed", seed}, {"weights", "random normal(0, 0.02), norms 1"}}}};
  if (s.llama3_rope) {
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 8192}};
  }
  return c;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  check(static_cast<bool>(out), ErrorCode::kIo, "cannot write '" + path.string() + "'");
  out << text;
  out.close();
  check(static_cast<bool>(out), ErrorCode::kIo, "cannot write '" + path.string() + "' (disk full?)");
}

// Creates `out`, or checks that it is an empty folder (or, with --force, removes the files a
// previous make-model run wrote there: config.json, the index and *.safetensors).
void prepare_folder(const fs::path& out, bool force) {
  std::error_code ec;
  const fs::file_status st = fs::status(out, ec);
  if (fs::exists(st)) {
    check(fs::is_directory(st), ErrorCode::kIo, "--out '" + out.string() + "' exists and is not a folder");
    const bool empty = fs::is_empty(out, ec);
    check(!ec, ErrorCode::kIo, "cannot read folder '" + out.string() + "': " + ec.message());
    if (empty) return;
    check(force, ErrorCode::kInvalidArgument,
          "--out '" + out.string() + "' is not empty (pass --force to overwrite the model there)");
    std::vector<fs::path> stale;
    for (const fs::directory_entry& e : fs::directory_iterator(out, ec)) {
      const fs::path name = e.path().filename();
      if (name == "config.json" || name == "model.safetensors.index.json" ||
          name.extension() == ".safetensors")
        stale.push_back(e.path());
    }
    check(!ec, ErrorCode::kIo, "cannot read folder '" + out.string() + "': " + ec.message());
    for (const fs::path& p : stale) {
      fs::remove(p, ec);
      check(!ec, ErrorCode::kIo, "cannot remove '" + p.string() + "': " + ec.message());
    }
    return;
  }
  fs::create_directories(out, ec);
  check(!ec, ErrorCode::kIo, "cannot create folder '" + out.string() + "': " + ec.message());
}

// 1234567 -> "1.23 M", with the unit's prefix picked by size.
std::string human(double x, const char* unit) {
  const char* prefix[] = {"", "k", "M", "G", "T"};
  int i = 0;
  for (; i < 4 && x >= 1000.0; ++i) x /= 1000.0;
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f %s%s", i == 0 ? 0 : 2, x, prefix[i], unit);
  return buf;
}
std::string bytes_text(std::uint64_t bytes) {
  return human(static_cast<double>(bytes), "B");
}
std::string params_text(std::uint64_t n) {  // 8.03B, 134.5M, 104.4k
  const double x = static_cast<double>(n);
  char buf[32];
  if (x >= 1e9) {
    std::snprintf(buf, sizeof buf, "%.2fB", x / 1e9);
  } else if (x >= 1e6) {
    std::snprintf(buf, sizeof buf, "%.1fM", x / 1e6);
  } else {
    std::snprintf(buf, sizeof buf, "%.1fk", x / 1e3);
  }
  return buf;
}

}  // namespace

int cmd_make_model(const std::vector<std::string>& argv) {
  const Args args(argv, {"shape", "out", "seed", "dtype", "shard-mb", "threads"}, {"force", "with-eos"});
  const std::string shape_name = args.required("shape");
  const Shape* shape = nullptr;
  std::string known;
  for (const Shape& s : kShapes) {
    if (shape_name == s.name) shape = &s;
    known += known.empty() ? s.name : std::string("|") + s.name;
  }
  check(shape != nullptr, ErrorCode::kInvalidArgument,
        "--shape must be one of " + known + ", got '" + shape_name + "'");
  const fs::path out = args.required("out");
  check(!out.empty(), ErrorCode::kInvalidArgument, "--out must not be empty");
  const long long seed = args.integer("seed", 0);
  check(seed >= 0, ErrorCode::kInvalidArgument, "--seed must be >= 0");
  const std::string dtype_name = args.str("dtype", "bf16");
  check(dtype_name == "bf16" || dtype_name == "f16" || dtype_name == "f32", ErrorCode::kInvalidArgument,
        "--dtype must be bf16, f16 or f32, got '" + dtype_name + "'");
  const OutDtype dtype = dtype_name == "bf16"  ? OutDtype::kBF16
                         : dtype_name == "f16" ? OutDtype::kF16
                                               : OutDtype::kF32;
  const double shard_mb = args.number("shard-mb", 4096);
  check(shard_mb > 0, ErrorCode::kInvalidArgument, "--shard-mb must be > 0");
  const auto hw = static_cast<long long>(std::max(1U, std::thread::hardware_concurrency()));
  const long long threads = args.integer("threads", hw);
  check(threads >= 1 && threads <= 1024, ErrorCode::kInvalidArgument, "--threads must be in [1, 1024]");

  // Plan the shards: tensors in checkpoint order, a new shard when the next tensor would pass the limit.
  const std::vector<SyntheticTensor> tensors = tensor_list(*shape);
  const auto shard_limit = static_cast<std::uint64_t>(shard_mb * 1024.0 * 1024.0);
  std::vector<std::vector<SyntheticTensor>> shards(1);
  std::vector<std::uint64_t> shard_bytes(1, 0);
  std::uint64_t total = 0, params = 0;
  for (const SyntheticTensor& t : tensors) {
    const std::uint64_t bytes = t.elements() * dtype_bytes(dtype);
    if (!shards.back().empty() && shard_bytes.back() + bytes > shard_limit) {
      shards.emplace_back();
      shard_bytes.push_back(0);
    }
    shards.back().push_back(t);
    shard_bytes.back() += bytes;
    total += bytes;
    params += t.elements();
  }

  prepare_folder(out, args.flag("force"));
  std::error_code ec;
  const fs::space_info space = fs::space(out, ec);
  check(ec || space.available >= total + (1U << 20), ErrorCode::kIo,
        "'" + out.string() + "' has " + bytes_text(space.available) + " free but the model needs " +
            bytes_text(total));

  std::printf("make-model: %s, %s parameters, %s, %s in %zu shard(s) -> %s\n", shape->name,
              params_text(params).c_str(), dtype_name.c_str(), bytes_text(total).c_str(), shards.size(),
              out.string().c_str());
  std::fflush(stdout);
  const auto t0 = std::chrono::steady_clock::now();
  json weight_map = json::object();
  for (std::size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    if (shards.size() == 1) {
      std::snprintf(name, sizeof name, "model.safetensors");
    } else {
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    }
    const auto ts = std::chrono::steady_clock::now();
    write_synthetic_safetensors(out / name, shards[i], dtype, static_cast<std::uint64_t>(seed),
                                static_cast<int>(threads));
    for (const SyntheticTensor& t : shards[i]) weight_map[t.name] = name;
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
    std::printf("  %s  %s  %zu tensors  %.1f s\n", name, bytes_text(shard_bytes[i]).c_str(), shards[i].size(),
                s);
    std::fflush(stdout);
  }
  if (shards.size() > 1) {
    const json index{{"metadata", {{"total_size", total}, {"total_parameters", params}}},
                     {"weight_map", weight_map}};
    write_text(out / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  // config.json last: a folder that has one holds a complete model.
  write_text(
      out / "config.json",
      config_json(*shape, dtype, static_cast<std::uint64_t>(seed), args.flag("with-eos")).dump(2) + "\n");
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("wrote %s in %.1f s (%.2f GB/s)%s\n", out.string().c_str(), wall,
              wall > 0 ? static_cast<double>(total) / 1e9 / wall : 0.0,
              args.flag("with-eos") ? "" : "; no eos_token_id: requests run to max_tokens");
  return 0;
}

}  // namespace chunkwise::cli
