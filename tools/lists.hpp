// Comma-separated option values (--lengths 2048,4096, --chunks 4,8).
#pragma once

#include <string>
#include <vector>

namespace chunkwise::cli {

// The non-empty items of s between separators.
std::vector<std::string> split(const std::string& s, char sep);
// Positive integers separated by commas; throws Error(kInvalidArgument) naming --option otherwise.
std::vector<int> int_list(const std::string& s, const std::string& option);

}  // namespace chunkwise::cli
