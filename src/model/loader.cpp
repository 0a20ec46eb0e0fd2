#include "chunkwise/model/loader.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "chunkwise/core/error.hpp"
#include "chunkwise/model/gguf.hpp"
#include "chunkwise/model/safetensors.hpp"
#include "chunkwise/model/tokenizer.hpp"

namespace chunkwise {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, fmt::format("cannot open '{}'", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(ErrorCode::kIo, fmt::format("cannot read '{}'", path.string()));
  return std::move(ss).str();
}

// A shard named by the index must be a plain file name inside the folder.
void check_shard_name(const std::string& name) {
  if (name.empty() || name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name == "." || name == "..") {
    throw Error(ErrorCode::kModelFormat, fmt::format("safetensors index: bad shard file name '{}'", name));
  }
}

// Shard files in load order, with the tensor names the index promises each holds.
std::vector<std::pair<std::string, std::vector<std::string>>> shard_plan(const fs::path& folder) {
  std::vector<std::pair<std::string, std::vector<std::string>>> plan;
  const fs::path index = folder / "model.safetensors.index.json";
  if (fs::exists(index)) {
    json j;
    try {
      j = json::parse(read_text(index));
    } catch (const json::exception& e) {
      throw Error(ErrorCode::kModelFormat, fmt::format("'{}': invalid JSON: {}", index.string(), e.what()));
    }
    const auto wm = j.find("weight_map");
    if (!j.is_object() || wm == j.end() || !wm->is_object()) {
      throw Error(ErrorCode::kModelFormat, fmt::format("'{}' has no weight_map object", index.string()));
    }
    std::map<std::string, std::vector<std::string>> by_file;
    for (const auto& [tensor, file] : wm->items()) {
      if (!file.is_string()) {
        throw Error(ErrorCode::kModelFormat,
                    fmt::format("'{}': weight_map['{}'] is not a string", index.string(), tensor));
      }
      const auto& name = file.get_ref<const std::string&>();
      check_shard_name(name);
      by_file[name].push_back(tensor);
    }
    for (auto& [file, tensors] : by_file) plan.emplace_back(file, std::move(tensors));
    return plan;
  }
  if (fs::exists(folder / "model.safetensors")) return {{"model.safetensors", {}}};
  for (const auto& e : fs::directory_iterator(folder)) {
    if (e.is_regular_file() && e.path().extension() == ".safetensors")
      plan.emplace_back(e.path().filename(), std::vector<std::string>{});
  }
  std::sort(plan.begin(), plan.end());
  if (plan.empty())
    throw Error(ErrorCode::kIo, fmt::format("no *.safetensors files in '{}'", folder.string()));
  return plan;
}

}  // namespace

LoadedModel load_gguf_model(const fs::path& file) {
  const gguf::Reader reader(file);
  return gguf::to_model(reader.file(), reader.bytes(), file.string());
}

LoadedModel load_safetensors_model(const fs::path& folder) {
  if (!fs::is_directory(folder))
    throw Error(ErrorCode::kIo, fmt::format("'{}' is not a folder", folder.string()));
  LoadedModel out;
  out.source = folder.string();
  out.config = safetensors::config_from_json(read_text(folder / "config.json"));

  std::vector<MappedFile> maps;
  std::vector<safetensors::Shard> shards;
  const auto plan = shard_plan(folder);
  maps.reserve(plan.size());
  shards.reserve(plan.size());
  for (const auto& [file, promised] : plan) {
    maps.emplace_back(folder / file);
    safetensors::Shard s{file, safetensors::parse(maps.back().bytes()), maps.back().bytes()};
    for (const std::string& t : promised) {
      if (s.header.find(t) == nullptr) {
        throw Error(ErrorCode::kModelFormat,
                    fmt::format("safetensors: index places tensor '{}' in '{}', which does "
                                "not contain it",
                                t, file));
      }
    }
    shards.push_back(std::move(s));
  }
  out.weights = safetensors::weights_from_shards(out.config, shards);

  const fs::path tok = folder / "tokenizer.json";
  if (fs::exists(tok)) {
    out.tokenizer = Tokenizer::spec_from_json(tok);
    if (static_cast<std::int64_t>(out.tokenizer.tokens.size()) > out.config.vocab) {
      throw Error(ErrorCode::kModelFormat,
                  fmt::format("'{}' has {} tokens but config.json says vocab_size {}", tok.string(),
                              out.tokenizer.tokens.size(), out.config.vocab));
    }
    // config.json's ids win (that is what transformers generates with); fall back to the tokenizer's.
    if (out.config.bos < 0) out.config.bos = out.tokenizer.bos;
    if (out.config.eos < 0) out.config.eos = out.tokenizer.eos;
    validate(out.config);
  }
  return out;
}

LoadedModel load_model(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_safetensors_model(path);
  if (!fs::exists(path, ec)) throw Error(ErrorCode::kIo, fmt::format("'{}' does not exist", path.string()));
  return load_gguf_model(path);
}

}  // namespace chunkwise
