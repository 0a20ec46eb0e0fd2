// The workload file of `chunkwise batch` (docs/formats.md): JSON Lines, one request a line.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "chunkwise/sched/request.hpp"

namespace chunkwise {

struct WorkloadItem {
  Request request;  // label holds the item's id
  double arrival_s = 0;
};

// Parses the whole file before anything runs; a bad line throws Error(kInvalidArgument) naming
// the file, the line number and the field.
std::vector<WorkloadItem> read_workload(const std::filesystem::path& file);
std::vector<WorkloadItem> parse_workload(const std::string& text, const std::string& name = "workload");

}  // namespace chunkwise
