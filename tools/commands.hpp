#pragma once

#include <memory>
#include <string>
#include <vector>

#include "args.hpp"
#include "chunkwise/model/model.hpp"
#include "chunkwise/sched/session_config.hpp"

namespace chunkwise::cli {

int cmd_run(const std::vector<std::string>& argv);
int cmd_batch(const std::vector<std::string>& argv);
int cmd_logits(const std::vector<std::string>& argv);

// --model (default: the fetched model), --device, --threads: shared by every subcommand.
std::shared_ptr<const Model> load_model_from_args(const Args& args);
SessionConfig session_config_from_args(const Args& args);

}  // namespace chunkwise::cli
