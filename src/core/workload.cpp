#include "chunkwise/sched/workload.hpp"

#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_set>

#include "chunkwise/core/error.hpp"

namespace chunkwise {

namespace {

using nlohmann::json;

template <class T>
T get_int(const json& j, const char* key, T fallback, const std::string& where) {
  if (!j.contains(key)) return fallback;
  const json& v = j.at(key);
  check(v.is_number_integer(), ErrorCode::kInvalidArgument, where + ": '" + key + "' must be an integer");
  const auto x = v.get<long long>();
  check(x >= std::numeric_limits<T>::min() && x <= std::numeric_limits<T>::max(), ErrorCode::kInvalidArgument,
        where + ": '" + key + "' out of range");
  return static_cast<T>(x);
}

double get_number(const json& j, const char* key, double fallback, const std::string& where) {
  if (!j.contains(key)) return fallback;
  const json& v = j.at(key);
  check(v.is_number() && std::isfinite(v.get<double>()), ErrorCode::kInvalidArgument,
        where + ": '" + key + "' must be a finite number");
  return v.get<double>();
}

std::vector<TokenId> get_tokens(const json& j, const char* key, const std::string& where) {
  std::vector<TokenId> out;
  if (!j.contains(key)) return out;
  const json& v = j.at(key);
  check(v.is_array(), ErrorCode::kInvalidArgument, where + ": '" + key + "' must be an array of integers");
  for (const json& t : v) {
    check(t.is_number_integer(), ErrorCode::kInvalidArgument, where + ": '" + key + "' must hold integers");
    const auto x = t.get<long long>();
    check(x >= std::numeric_limits<TokenId>::min() && x <= std::numeric_limits<TokenId>::max(),
          ErrorCode::kTokenOutOfRange, where + ": token id " + std::to_string(x) + " out of range");
    out.push_back(static_cast<TokenId>(x));
  }
  return out;
}

// "segments": [{"kind": "prefix" | "chunk" | "question", "text": "..." or "tokens": [...]}, ...]
std::vector<RequestSegment> get_segments(const json& v, const std::string& where) {
  check(v.is_array() && !v.empty(), ErrorCode::kInvalidArgument,
        where + ": 'segments' must be a non-empty array of objects");
  std::vector<RequestSegment> out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const json& s = v[i];
    const std::string at = where + ": segment " + std::to_string(i);
    check(s.is_object(), ErrorCode::kInvalidArgument, at + " must be an object");
    check(s.contains("kind") && s["kind"].is_string(), ErrorCode::kInvalidArgument,
          at + ": 'kind' (prefix, chunk or question) is required");
    const auto kind = segment_kind(s["kind"].get<std::string>());
    check(kind.has_value(), ErrorCode::kInvalidArgument,
          at + ": 'kind' must be prefix, chunk or question, not '" + s["kind"].get<std::string>() + "'");
    RequestSegment seg;
    seg.kind = *kind;
    check(s.contains("text") != s.contains("tokens"), ErrorCode::kInvalidArgument,
          at + ": exactly one of 'text' and 'tokens' is required");
    if (s.contains("text")) {
      check(s["text"].is_string() && !s["text"].get<std::string>().empty(), ErrorCode::kInvalidArgument,
            at + ": 'text' must be a non-empty string");
      seg.text = s["text"].get<std::string>();
    } else {
      seg.tokens = get_tokens(s, "tokens", at);
      check(!seg.tokens.empty(), ErrorCode::kInvalidArgument, at + ": 'tokens' is empty");
    }
    out.push_back(std::move(seg));
  }
  return out;
}

WorkloadItem parse_line(const std::string& line, const std::string& where) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kInvalidArgument, where + ": not valid JSON (" + e.what() + ")");
  }
  check(j.is_object(), ErrorCode::kInvalidArgument, where + ": a line must be a JSON object");
  WorkloadItem item;
  Request& r = item.request;
  check(j.contains("id") && j["id"].is_string(), ErrorCode::kInvalidArgument,
        where + ": 'id' (string) is required");
  r.label = j["id"].get<std::string>();
  const bool has_text = j.contains("prompt");
  const bool has_tokens = j.contains("prompt_tokens");
  const bool has_segments = j.contains("segments");
  check(int{has_text} + int{has_tokens} + int{has_segments} == 1, ErrorCode::kInvalidArgument,
        where + ": exactly one of 'prompt', 'prompt_tokens' and 'segments' is required");
  if (has_segments) {
    r.segments = get_segments(j["segments"], where);
  } else if (has_text) {
    check(j["prompt"].is_string(), ErrorCode::kInvalidArgument, where + ": 'prompt' must be a string");
    r.prompt_text = j["prompt"].get<std::string>();
  } else {
    r.prompt_tokens = get_tokens(j, "prompt_tokens", where);
    check(!r.prompt_tokens.empty(), ErrorCode::kInvalidArgument, where + ": 'prompt_tokens' is empty");
  }
  check(j.contains("max_tokens"), ErrorCode::kInvalidArgument, where + ": 'max_tokens' is required");
  r.max_new_tokens = get_int<int>(j, "max_tokens", 0, where);
  check(r.max_new_tokens >= 1, ErrorCode::kInvalidArgument, where + ": 'max_tokens' must be >= 1");
  item.arrival_s = get_number(j, "arrival_s", 0.0, where);
  check(item.arrival_s >= 0, ErrorCode::kInvalidArgument, where + ": 'arrival_s' must be >= 0");
  r.priority = get_int<int>(j, "priority", 0, where);
  if (j.contains("chat")) {
    check(j["chat"].is_boolean(), ErrorCode::kInvalidArgument, where + ": 'chat' must be true or false");
    r.chat = j["chat"].get<bool>();
  }
  r.sampling.temperature = static_cast<float>(get_number(j, "temperature", 0.0, where));
  r.sampling.top_k = get_int<int>(j, "top_k", 0, where);
  r.sampling.top_p = static_cast<float>(get_number(j, "top_p", 1.0, where));
  if (j.contains("seed")) {
    check(j["seed"].is_number_unsigned(), ErrorCode::kInvalidArgument,
          where + ": 'seed' must be an integer >= 0");
    r.sampling.seed = j["seed"].get<std::uint64_t>();
  }
  r.stop_tokens = get_tokens(j, "stop_tokens", where);
  try {
    validate(r.sampling);
  } catch (const Error& e) {
    throw Error(ErrorCode::kInvalidArgument, where + ": " + e.what());
  }
  return item;
}

}  // namespace

std::vector<WorkloadItem> parse_workload(const std::string& text, const std::string& name) {
  std::vector<WorkloadItem> items;
  std::unordered_set<std::string> ids;
  std::istringstream in(text);
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = name + ":" + std::to_string(line_no);
    WorkloadItem item = parse_line(line, where);
    check(ids.insert(item.request.label).second, ErrorCode::kInvalidArgument,
          where + ": duplicate id '" + item.request.label + "'");
    items.push_back(std::move(item));
  }
  check(!items.empty(), ErrorCode::kInvalidArgument, name + ": no requests");
  return items;
}

std::vector<WorkloadItem> read_workload(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  check(static_cast<bool>(in), ErrorCode::kIo, "cannot open workload '" + file.string() + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_workload(ss.str(), file.string());
}

}  // namespace chunkwise
