// Engine: InferenceSession with its policies chosen at run time, for the CLI, benchmarks and
// services that pick policies at start-up. A registry holds every stock combination of
// batching x eviction policy, with the sparse policy made by name (make_sparse_policy; reuse is
// fixed to its default for now); each is
// an InferenceSession instantiated once in src/sched/engine.cpp behind a small virtual
// interface, so the per-step cost of the indirection is one virtual call. The device comes from
// config.session.backend (null: the CPU reference; cuda::backend_provider() for the GPU).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "chunkwise/kv/kv_types.hpp"
#include "chunkwise/model/model.hpp"
#include "chunkwise/sched/request.hpp"
#include "chunkwise/sched/session_config.hpp"
#include "chunkwise/sched/session_metrics.hpp"

namespace chunkwise {

struct EngineConfig {
  std::string batching = "stall-free";  // prefill-first | stall-free | prefix-grouped | packed
  int token_budget = 0;                 // tokens per step for the batching policy; 0 = its default
  std::string eviction = "lru";         // lru | prefix-lifetime | cost-aware | priority
  double retention_s = 60.0;            // priority eviction: how long a priority holds after last use
  double half_life_s = 60.0;            // cost-aware eviction: decay of the reuse frequency
  std::string sparse = "dense";         // a make_sparse_policy() spec, e.g. "flex-prefill:gamma=0.95"
  SessionConfig session;

  // Applies "key=value" pairs separated by spaces, e.g. "batching=stall-free token_budget=512
  // eviction=lru kv_blocks=4096 prefix_caching=off". Throws Error(kInvalidArgument) naming a bad
  // key or value.
  void apply(std::string_view settings);
};

class Engine {
 public:
  Engine(std::shared_ptr<const Model> model, EngineConfig config);
  ~Engine();
  Engine(Engine&&) noexcept;
  Engine& operator=(Engine&&) noexcept;

  static std::vector<std::string> batching_policies();
  static std::vector<std::string> eviction_policies();

  RequestId submit(Request request);
  RequestId fork(RequestId parent, SamplingParams sampling, std::string label);
  bool cancel(RequestId id);
  StepResult step();
  std::vector<FinishedRequest> take_finished();
  void clear_prefix_cache();

  [[nodiscard]] bool has_work() const;
  [[nodiscard]] std::size_t num_running() const;
  [[nodiscard]] std::size_t num_waiting() const;
  [[nodiscard]] const SessionMetrics& metrics() const;
  [[nodiscard]] const KvMetrics& kv_metrics() const;
  [[nodiscard]] KvUsage kv_usage() const;
  [[nodiscard]] std::string check_kv_invariants() const;
  [[nodiscard]] double now() const;
  [[nodiscard]] const EngineConfig& config() const { return config_; }

  struct Impl;  // the session behind the facade (src/sched/engine.cpp)

 private:
  EngineConfig config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chunkwise
