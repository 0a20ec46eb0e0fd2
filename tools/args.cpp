#include "args.hpp"

#include <cmath>
#include <cstdlib>

#include "chunkwise/core/error.hpp"

namespace chunkwise::cli {

Args::Args(const std::vector<std::string>& argv, const std::set<std::string>& options,
           const std::set<std::string>& flags) {
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    check(a.rfind("--", 0) == 0, ErrorCode::kInvalidArgument, "unexpected argument '" + a + "'");
    std::string name = a.substr(2);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (flags.count(name) != 0) {
      check(!value, ErrorCode::kInvalidArgument, "--" + name + " takes no value");
      flags_.insert(name);
      continue;
    }
    check(options.count(name) != 0, ErrorCode::kInvalidArgument, "unknown option --" + name);
    if (!value) {
      check(i + 1 < argv.size(), ErrorCode::kInvalidArgument, "--" + name + " needs a value");
      value = argv[++i];
    }
    values_[name].push_back(*value);
  }
}

std::optional<std::string> Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second.back();
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

std::string Args::str(const std::string& name, const std::string& fallback) const {
  return get(name).value_or(fallback);
}

std::string Args::required(const std::string& name) const {
  auto v = get(name);
  check(v.has_value(), ErrorCode::kInvalidArgument, "--" + name + " is required");
  return *v;
}

long long Args::integer(const std::string& name, long long fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  char* end = nullptr;
  const long long x = std::strtoll(v->c_str(), &end, 10);
  check(!v->empty() && end != nullptr && *end == '\0', ErrorCode::kInvalidArgument,
        "--" + name + " expects an integer, got '" + *v + "'");
  return x;
}

double Args::number(const std::string& name, double fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  char* end = nullptr;
  const double x = std::strtod(v->c_str(), &end);
  check(!v->empty() && end != nullptr && *end == '\0' && std::isfinite(x), ErrorCode::kInvalidArgument,
        "--" + name + " expects a number, got '" + *v + "'");
  return x;
}

}  // namespace chunkwise::cli
