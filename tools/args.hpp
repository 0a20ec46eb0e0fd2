// A small flag parser for the chunkwise tool: --name value, --name=value and boolean --flag.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace chunkwise::cli {

class Args {
 public:
  // flags: names that take no value. Throws Error(kInvalidArgument) on an unknown option.
  Args(const std::vector<std::string>& argv, const std::set<std::string>& options,
       const std::set<std::string>& flags);

  [[nodiscard]] bool flag(const std::string& name) const { return flags_.count(name) != 0; }
  // The last value given for name.
  [[nodiscard]] std::optional<std::string> get(const std::string& name) const;
  // Every value given for name, in order (for options that may repeat).
  [[nodiscard]] std::vector<std::string> all(const std::string& name) const;
  [[nodiscard]] std::string str(const std::string& name, const std::string& fallback) const;
  [[nodiscard]] std::string required(const std::string& name) const;
  [[nodiscard]] long long integer(const std::string& name, long long fallback) const;
  [[nodiscard]] double number(const std::string& name, double fallback) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::set<std::string> flags_;
};

// Options every subcommand takes.
inline const std::set<std::string> kCommonOptions = {
    "model",      "device",      "threads",      "block-size",
    "kv-mb",      "kv-blocks",   "prefix-cache", "host-cache-blocks",
    "preemption", "swap-blocks", "precision"};

}  // namespace chunkwise::cli
