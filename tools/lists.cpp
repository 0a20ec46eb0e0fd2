#include "lists.hpp"

#include <sstream>

#include "chunkwise/core/error.hpp"

namespace chunkwise::cli {

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

std::vector<int> int_list(const std::string& s, const std::string& option) {
  std::vector<int> out;
  for (const std::string& item : split(s, ',')) {
    std::size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    check(used == item.size() && v > 0, ErrorCode::kInvalidArgument,
          "--" + option + " takes positive integers separated by commas, got '" + s + "'");
    out.push_back(v);
  }
  check(!out.empty(), ErrorCode::kInvalidArgument, "--" + option + " is empty");
  return out;
}

}  // namespace chunkwise::cli
