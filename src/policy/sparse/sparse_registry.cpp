// The stock sparse policies by name, for the CLI and the Engine.
#include <charconv>
#include <exception>
#include <map>
#include <optional>
#include <string_view>

#include "chunkwise/policy/sparse/any_sparse_attention.hpp"
#include "chunkwise/policy/sparse/block_topk_attention.hpp"
#include "chunkwise/policy/sparse/dense_attention.hpp"
#include "chunkwise/policy/sparse/flex_prefill_attention.hpp"
#include "chunkwise/policy/sparse/streaming_attention.hpp"
#include "chunkwise/policy/sparse/vertical_slash_attention.hpp"

namespace chunkwise {

namespace {

// The key=value pairs of a spec; every key must be consumed.
class SpecArgs {
 public:
  SpecArgs(std::string policy, std::string_view list) : policy_(std::move(policy)) {
    while (!list.empty()) {
      const std::size_t comma = list.find(',');
      const std::string_view item = list.substr(0, comma);
      const std::size_t eq = item.find('=');
      check(eq != std::string_view::npos && eq > 0, ErrorCode::kInvalidArgument,
            "--sparse " + policy_ + ": expected key=value, got '" + std::string(item) + "'");
      kv_[std::string(item.substr(0, eq))] = std::string(item.substr(eq + 1));
      list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
    }
  }
  int integer(const std::string& key, int fallback) {
    const auto it = take(key);
    if (!it) return fallback;
    int v = 0;
    const auto [end, ec] = std::from_chars(it->data(), it->data() + it->size(), v);
    check(ec == std::errc() && end == it->data() + it->size(), ErrorCode::kInvalidArgument,
          "--sparse " + policy_ + ": " + key + " must be an integer, got '" + *it + "'");
    return v;
  }
  double number(const std::string& key, double fallback) {
    const auto it = take(key);
    if (!it) return fallback;
    std::size_t used = 0;
    double v = 0;
    try {
      v = std::stod(*it, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    check(used == it->size() && used > 0, ErrorCode::kInvalidArgument,
          "--sparse " + policy_ + ": " + key + " must be a number, got '" + *it + "'");
    return v;
  }
  std::optional<std::string> text(const std::string& key) { return take(key); }
  SparseFallback fallback(int default_min_kv_len) {
    SparseFallback f;
    f.min_kv_len = integer("min_kv_len", default_min_kv_len);
    if (const auto layers = take("dense_layers")) {
      std::string_view rest = *layers;
      while (!rest.empty()) {
        const std::size_t slash = rest.find('/');
        const std::string_view item = rest.substr(0, slash);
        int v = 0;
        const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
        check(ec == std::errc() && end == item.data() + item.size(), ErrorCode::kInvalidArgument,
              "--sparse " + policy_ + ": dense_layers must be layer indices joined by '/', got '" + *layers +
                  "'");
        f.dense_layers.push_back(v);
        rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
      }
    }
    return f;
  }
  void done() const {
    if (kv_.empty()) return;
    throw Error(ErrorCode::kInvalidArgument,
                "--sparse " + policy_ + ": unknown key '" + kv_.begin()->first + "'");
  }

 private:
  std::optional<std::string> take(const std::string& key) {
    const auto it = kv_.find(key);
    if (it == kv_.end()) return std::nullopt;
    std::string v = it->second;
    kv_.erase(it);
    return v;
  }
  std::string policy_;
  std::map<std::string, std::string> kv_;
};

template <class P>
AnySparseAttention finish(SpecArgs& args, P policy, const std::string& name) {
  args.done();
  return AnySparseAttention(std::move(policy), name);
}

}  // namespace

std::vector<std::string> sparse_policies() {
  return {"dense", "streaming", "vertical-slash", "block-topk", "flex-prefill"};
}

AnySparseAttention make_sparse_policy(const std::string& spec) {
  const std::size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  SpecArgs args(name,
                colon == std::string::npos ? std::string_view() : std::string_view(spec).substr(colon + 1));
  if (name == "dense") return finish(args, DenseAttention{}, name);
  if (name == "streaming") {
    StreamingAttention::Params p;
    p.tile = args.integer("tile", p.tile);
    p.sink = args.integer("sink", p.sink);
    p.window = args.integer("window", p.window);
    p.fallback = args.fallback(p.fallback.min_kv_len);
    return finish(args, StreamingAttention(p), name);
  }
  if (name == "block-topk") {
    BlockTopKAttention::Params p;
    p.tile = args.integer("tile", p.tile);
    p.top_k = args.integer("top_k", p.top_k);
    p.fallback = args.fallback(p.fallback.min_kv_len);
    return finish(args, BlockTopKAttention(p), name);
  }
  if (name == "vertical-slash") {
    VerticalSlashAttention::Params p;
    if (const auto path = args.text("config")) p.config = load_vertical_slash_config(*path);
    p.tile = args.integer("tile", p.tile);
    p.last_queries = args.integer("last_queries", p.last_queries);
    p.config.default_sizes.vertical = args.integer("vertical", p.config.default_sizes.vertical);
    p.config.default_sizes.slash = args.integer("slash", p.config.default_sizes.slash);
    check(p.config.default_sizes.vertical >= 0 && p.config.default_sizes.slash >= 0,
          ErrorCode::kInvalidArgument, "--sparse vertical-slash: vertical and slash must be >= 0");
    p.fallback = args.fallback(p.fallback.min_kv_len);
    return finish(args, VerticalSlashAttention(p), name);
  }
  if (name == "flex-prefill") {
    FlexPrefillAttention::Params p;
    p.tile = args.integer("tile", p.tile);
    p.gamma = args.number("gamma", p.gamma);
    p.tau = args.number("tau", p.tau);
    p.min_budget = args.integer("min_budget", p.min_budget);
    p.max_budget = args.integer("max_budget", p.max_budget);
    p.fallback = args.fallback(p.fallback.min_kv_len);
    return finish(args, FlexPrefillAttention(p), name);
  }
  throw Error(
      ErrorCode::kInvalidArgument,
      "unknown sparse policy '" + name + "' (dense, streaming, vertical-slash, block-topk, flex-prefill)");
}

}  // namespace chunkwise
