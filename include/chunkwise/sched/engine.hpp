// Engine: InferenceSession with its policies chosen at run time, for the CLI, benchmarks and
// services that pick policies at start-up. A registry holds every stock combination of
// batching x eviction policy, with the sparse and reuse policies made by name (make_sparse_policy,
// make_reuse_policy); each is
// an InferenceSession instantiated once in src/sched/engine.cpp behind a small virtual
// interface, so the per-step cost of the indirection is one virtual call. The device comes from
// config.session.backend (null: the CPU reference; cuda::backend_provider() for the GPU).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "chunkwise/kv/chunk_store.hpp"
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
  // Chunk reuse for requests given in segments: prefix | full | blend | adaptive-blend
  // (make_reuse_policy), with its recompute ratio (< 0: the policy's default). Any policy but
  // prefix uses session.chunk_store, or a store the engine makes from the settings below, keyed by
  // model_fingerprint() of the model.
  std::string reuse = "prefix";
  double recompute_ratio = -1;
  std::size_t chunk_store_mb = 1024;  // host RAM tier of a store the engine makes
  std::string chunk_store_dir;        // its disk tier; "" = none
  std::size_t chunk_disk_mb = 8192;
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
  static std::vector<std::string> reuse_policies();

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
  // The chunk store reuse reads and fills (null with reuse = prefix).
  [[nodiscard]] const std::shared_ptr<ChunkStore>& chunk_store() const { return config_.session.chunk_store; }

  struct Impl;  // the session behind the facade (src/sched/engine.cpp)

 private:
  EngineConfig config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chunkwise
