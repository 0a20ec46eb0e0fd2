#pragma once

#include <memory>
#include <string>
#include <vector>

#include "args.hpp"
#include "chunkwise/backend/any_backend.hpp"
#include "chunkwise/model/model.hpp"
#include "chunkwise/sched/engine.hpp"
#include "chunkwise/sched/session_config.hpp"

namespace chunkwise::cli {

int cmd_run(const std::vector<std::string>& argv);
int cmd_batch(const std::vector<std::string>& argv);
int cmd_logits(const std::vector<std::string>& argv);
int cmd_make_model(const std::vector<std::string>& argv);
int cmd_tune_sparse(const std::vector<std::string>& argv);
int cmd_eval_sparse(const std::vector<std::string>& argv);
int cmd_eval_reuse(const std::vector<std::string>& argv);

// --model (default: the fetched model), --device, --threads: shared by every subcommand.
std::shared_ptr<const Model> load_model_from_args(const Args& args);
SessionConfig session_config_from_args(const Args& args);
// --device cpu|cuda|cuda:N and --precision bf16|fp16 (the CUDA storage type); throws kUnsupported
// for cuda in a build without it, kBackend when the device is not there, kInvalidArgument for fp16
// on the CPU.
std::shared_ptr<const BackendProvider> backend_from_args(const Args& args);

// Chunk reuse for requests in segments: --reuse prefix|full|blend|blend-gradual|adaptive-blend,
// --recompute-ratio R,
// --chunk-store DIR (the disk tier, kept across runs), --chunk-store-mb N (host RAM),
// --chunk-disk-mb N, --chunk-device-mb N and --chunk-pinned-mb N (the GPU's chunk tier, on the
// device and in pinned host memory), --fill-chunk-store on|off, --load-control on|off.
inline const std::set<std::string> kReuseOptions = {"reuse",           "recompute-ratio",  "chunk-store",
                                                    "chunk-store-mb",  "chunk-disk-mb",    "chunk-device-mb",
                                                    "chunk-pinned-mb", "fill-chunk-store", "load-control"};
void reuse_config_from_args(const Args& args, EngineConfig& config);
// One stderr line on what chunk reuse did; nothing when no prompt was planned for reuse.
void print_reuse_stats(const Engine& engine);

}  // namespace chunkwise::cli
