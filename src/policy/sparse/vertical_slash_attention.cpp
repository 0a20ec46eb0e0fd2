#include "chunkwise/policy/sparse/vertical_slash_attention.hpp"

#include <algorithm>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"

namespace chunkwise {

namespace {
using nlohmann::json;

VerticalSlashSizes sizes_from(const json& j, const std::string& where) {
  if (j.is_string() && j.get<std::string>() == "dense") return {0, 0, true};
  check(j.is_array() && j.size() == 2 && j[0].is_number_integer() && j[1].is_number_integer(),
        ErrorCode::kInvalidArgument, where + ": expected [vertical, slash] or \"dense\"");
  const int v = j[0].get<int>(), s = j[1].get<int>();
  check(v >= 0 && s >= 0, ErrorCode::kInvalidArgument, where + ": sizes must be >= 0");
  return {v, s, false};
}

json to_json(const VerticalSlashSizes& s) {
  if (s.dense) return "dense";
  return json::array({s.vertical, s.slash});
}
}  // namespace

const VerticalSlashSizes& VerticalSlashConfig::sizes(int layer, int head) const {
  if (layer < 0 || layer >= static_cast<int>(heads.size())) return default_sizes;
  const auto& l = heads[static_cast<std::size_t>(layer)];
  if (head < 0 || head >= static_cast<int>(l.size())) return default_sizes;
  return l[static_cast<std::size_t>(head)];
}

VerticalSlashConfig load_vertical_slash_config(const std::string& path) {
  std::ifstream in(path);
  check(static_cast<bool>(in), ErrorCode::kInvalidArgument, "cannot read sparse config " + path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kInvalidArgument, "sparse config " + path + ": not JSON (" + e.what() + ")");
  }
  check(j.is_object() && j.value("format", "") == "chunkwise-vertical-slash/1", ErrorCode::kInvalidArgument,
        "sparse config " + path + ": format must be \"chunkwise-vertical-slash/1\"");
  VerticalSlashConfig c;
  c.model = j.value("model", "");
  if (j.contains("default")) c.default_sizes = sizes_from(j["default"], path + ": default");
  if (j.contains("heads")) {
    check(j["heads"].is_array(), ErrorCode::kInvalidArgument, path + ": heads must be an array of layers");
    for (std::size_t l = 0; l < j["heads"].size(); ++l) {
      const json& layer = j["heads"][l];
      check(layer.is_array(), ErrorCode::kInvalidArgument,
            path + ": heads[" + std::to_string(l) + "] must be an array");
      auto& out = c.heads.emplace_back();
      for (std::size_t h = 0; h < layer.size(); ++h)
        out.push_back(
            sizes_from(layer[h], path + ": heads[" + std::to_string(l) + "][" + std::to_string(h) + "]"));
    }
  }
  return c;
}

void save_vertical_slash_config(const VerticalSlashConfig& c, const std::string& path) {
  json j;
  j["format"] = "chunkwise-vertical-slash/1";
  j["model"] = c.model;
  j["default"] = to_json(c.default_sizes);
  j["heads"] = json::array();
  for (const auto& layer : c.heads) {
    json l = json::array();
    for (const auto& s : layer) l.push_back(to_json(s));
    j["heads"].push_back(l);
  }
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    check(static_cast<bool>(out), ErrorCode::kInvalidArgument, "cannot write " + tmp);
    out << j.dump(1) << "\n";
    check(static_cast<bool>(out), ErrorCode::kInvalidArgument, "cannot write " + tmp);
  }
  check(std::rename(tmp.c_str(), path.c_str()) == 0, ErrorCode::kInvalidArgument, "cannot rename " + tmp);
}

VerticalSlashAttention::VerticalSlashAttention(Params params)
    : SparsePolicyBase(std::move(params), "vertical-slash attention") {
  check(p_.last_queries >= 1 && p_.forced_columns >= 0 && p_.forced_diagonals >= 1,
        ErrorCode::kInvalidArgument,
        "vertical-slash attention: last_queries and forced_diagonals must be >= 1, forced_columns >= 0");
}

BlockMask VerticalSlashAttention::select(const AttentionProbe& probe) const {
  if (p_.fallback.dense_for(probe)) return dense_mask(probe, p_.tile);
  detail::MaskBuilder b(probe, p_.tile);
  detail::LastQueryAttention a;
  std::vector<float> vertical, slash;
  const int n = probe.kv_len, T = p_.tile;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (int h = 0; h < probe.n_heads; ++h) {
    const VerticalSlashSizes& sz = p_.config.sizes(probe.layer, h);
    if (sz.dense) {
      b.keep_all(h);
      continue;
    }
    detail::last_query_attention(probe, h, p_.last_queries, a);
    detail::vertical_slash_sums(a, vertical, slash);
    std::fill_n(vertical.begin(), std::min(p_.forced_columns, n), kInf);
    std::fill_n(slash.begin(), std::min(p_.forced_diagonals, n), kInf);
    const auto columns = detail::top_k(vertical, std::clamp(sz.vertical, std::min(p_.forced_columns, n), n));
    const auto offsets = detail::top_k(slash, std::clamp(sz.slash, std::min(p_.forced_diagonals, n), n));
    for (int j = 0; j < b.n_qtiles(); ++j) {
      const int t = b.first_qtile() + j;
      const int r0 = std::max(t * T, probe.query_begin),
                r1 = std::min((t + 1) * T, n);  // positions of the row
      for (const std::int32_t o : offsets) {
        const int hi = r1 - 1 - o;  // the band of diagonal o: keys [r0 - o, r1 - 1 - o]
        if (hi < 0) continue;
        for (int c = std::max(0, r0 - o) / T; c <= hi / T; ++c) b.keep_tile(h, j, c);
      }
      for (const std::int32_t col : columns) b.keep_column(h, j, col);
    }
  }
  return b.finish();
}

}  // namespace chunkwise
