// The registry behind Engine: one InferenceSession instantiation per (batching, eviction) pair.
#include "chunkwise/sched/engine.hpp"

#include <charconv>
#include <functional>
#include <map>
#include <optional>
#include <utility>

#include "chunkwise/policy/batching/packed_prefill_batching.hpp"
#include "chunkwise/policy/batching/prefill_first_batching.hpp"
#include "chunkwise/policy/batching/prefix_grouped_batching.hpp"
#include "chunkwise/policy/batching/stall_free_batching.hpp"
#include "chunkwise/policy/eviction/cost_aware_eviction.hpp"
#include "chunkwise/policy/eviction/lru_eviction.hpp"
#include "chunkwise/policy/eviction/prefix_lifetime_eviction.hpp"
#include "chunkwise/policy/eviction/priority_eviction.hpp"
#include "chunkwise/policy/reuse/any_reuse_policy.hpp"
#include "chunkwise/policy/sparse/any_sparse_attention.hpp"
#include "chunkwise/sched/inference_session.hpp"

namespace chunkwise {

struct Engine::Impl {
  virtual ~Impl() = default;
  virtual RequestId submit(Request r) = 0;
  virtual RequestId fork(RequestId parent, SamplingParams sampling, std::string label) = 0;
  virtual bool cancel(RequestId id) = 0;
  virtual StepResult step() = 0;
  virtual std::vector<FinishedRequest> take_finished() = 0;
  virtual void clear_prefix_cache() = 0;
  [[nodiscard]] virtual bool has_work() const = 0;
  [[nodiscard]] virtual std::size_t num_running() const = 0;
  [[nodiscard]] virtual std::size_t num_waiting() const = 0;
  [[nodiscard]] virtual const SessionMetrics& metrics() const = 0;
  [[nodiscard]] virtual const KvMetrics& kv_metrics() const = 0;
  [[nodiscard]] virtual KvUsage kv_usage() const = 0;
  [[nodiscard]] virtual std::string check_kv_invariants() const = 0;
  [[nodiscard]] virtual double now() const = 0;
};

namespace {

template <class Batching, class Eviction>
struct SessionImpl final : Engine::Impl {
  SessionImpl(std::shared_ptr<const Model> model, const SessionConfig& config, Batching b, Eviction e,
              AnySparseAttention sparse, AnyReusePolicy reuse)
      : s(std::move(model), config, std::move(b), std::move(e), std::move(sparse), std::move(reuse)) {}
  RequestId submit(Request r) override { return s.submit(std::move(r)); }
  RequestId fork(RequestId parent, SamplingParams sampling, std::string label) override {
    return s.fork(parent, sampling, std::move(label));
  }
  bool cancel(RequestId id) override { return s.cancel(id); }
  StepResult step() override { return s.step(); }
  std::vector<FinishedRequest> take_finished() override { return s.take_finished(); }
  void clear_prefix_cache() override { s.clear_prefix_cache(); }
  bool has_work() const override { return s.has_work(); }
  std::size_t num_running() const override { return s.num_running(); }
  std::size_t num_waiting() const override { return s.num_waiting(); }
  const SessionMetrics& metrics() const override { return s.metrics(); }
  const KvMetrics& kv_metrics() const override { return s.kv_metrics(); }
  KvUsage kv_usage() const override { return s.kv_usage(); }
  std::string check_kv_invariants() const override { return s.kv_cache().check_invariants(); }
  double now() const override { return s.now(); }

  InferenceSession<Batching, Eviction, AnySparseAttention, AnyReusePolicy, AnyBackend> s;
};

using ImplPtr = std::unique_ptr<Engine::Impl>;

// The session's per-step token cap follows the batching policy's budget.
template <class Batching>
ImplPtr with_eviction(const std::shared_ptr<const Model>& model, const EngineConfig& c, Batching b,
                      int budget) {
  SessionConfig sc = c.session;
  if (budget > 0) sc.max_batch_tokens = budget;
  auto make = [&]<class Eviction>(Eviction e) -> ImplPtr {
    return std::make_unique<SessionImpl<Batching, Eviction>>(
        model, sc, b, std::move(e), make_sparse_policy(c.sparse),
        make_reuse_policy(c.reuse, c.recompute_ratio < 0 ? std::nullopt : std::optional(c.recompute_ratio)));
  };
  if (c.eviction == "lru") return make(LruEviction{});
  if (c.eviction == "prefix-lifetime") return make(PrefixLifetimeEviction{});
  if (c.eviction == "cost-aware") return make(CostAwareEviction{c.half_life_s});
  if (c.eviction == "priority") return make(PriorityEviction{c.retention_s});
  throw Error(ErrorCode::kInvalidArgument,
              "unknown eviction policy '" + c.eviction + "' (lru, prefix-lifetime, cost-aware, priority)");
}

// A policy with the configured token budget, else its own default budget.
template <class Policy>
ImplPtr with_budget(const std::shared_ptr<const Model>& model, const EngineConfig& c, int default_budget) {
  const int budget = c.token_budget > 0 ? c.token_budget : default_budget;
  return with_eviction(model, c, Policy{budget}, budget);
}

// The token budget a batching policy runs with when none is configured.
int default_budget(const EngineConfig& c) {
  if (c.batching == "stall-free") return 512;
  if (c.batching == "prefix-grouped") return 4096;
  if (c.batching == "packed") return 2048;
  return c.session.max_batch_tokens;  // prefill-first: the session's cap
}

ImplPtr make_impl(const std::shared_ptr<const Model>& model, const EngineConfig& c) {
  check(c.token_budget >= 0, ErrorCode::kInvalidArgument, "token_budget must be >= 0");
  // Prefill-first has no budget of its own: the session's cap is its budget.
  if (c.batching == "prefill-first") return with_eviction(model, c, PrefillFirstBatching{}, c.token_budget);
  if (c.batching == "stall-free") return with_budget<StallFreeBatching>(model, c, default_budget(c));
  if (c.batching == "prefix-grouped") return with_budget<PrefixGroupedBatching>(model, c, default_budget(c));
  if (c.batching == "packed") return with_budget<PackedPrefillBatching>(model, c, default_budget(c));
  throw Error(ErrorCode::kInvalidArgument, "unknown batching policy '" + c.batching +
                                               "' (prefill-first, stall-free, prefix-grouped, packed)");
}

long long to_integer(std::string_view key, std::string_view v) {
  long long out = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  check(ec == std::errc() && end == v.data() + v.size(), ErrorCode::kInvalidArgument,
        "engine setting " + std::string(key) + ": '" + std::string(v) + "' is not an integer");
  return out;
}

double to_number(std::string_view key, std::string_view v) {
  try {
    std::size_t used = 0;
    const double d = std::stod(std::string(v), &used);
    if (used == v.size()) return d;
  } catch (const std::exception&) {
  }
  throw Error(ErrorCode::kInvalidArgument,
              "engine setting " + std::string(key) + ": '" + std::string(v) + "' is not a number");
}

int to_int(std::string_view key, std::string_view v) {
  const long long n = to_integer(key, v);
  check(n >= 0 && n <= (1LL << 30), ErrorCode::kInvalidArgument,
        "engine setting " + std::string(key) + " must be in [0, 2^30]");
  return static_cast<int>(n);
}

}  // namespace

void EngineConfig::apply(std::string_view settings) {
  using Setter = std::function<void(EngineConfig&, std::string_view key, std::string_view value)>;
  static const std::map<std::string, Setter, std::less<>> setters = {
      {"batching", [](EngineConfig& c, auto, auto v) { c.batching = v; }},
      {"token_budget", [](EngineConfig& c, auto k, auto v) { c.token_budget = to_int(k, v); }},
      {"eviction", [](EngineConfig& c, auto, auto v) { c.eviction = v; }},
      {"sparse", [](EngineConfig& c, auto, auto v) { c.sparse = v; }},
      {"reuse", [](EngineConfig& c, auto, auto v) { c.reuse = v; }},
      {"recompute_ratio", [](EngineConfig& c, auto k, auto v) { c.recompute_ratio = to_number(k, v); }},
      {"chunk_store_mb",
       [](EngineConfig& c, auto k, auto v) { c.chunk_store_mb = static_cast<std::size_t>(to_int(k, v)); }},
      {"chunk_store_dir", [](EngineConfig& c, auto, auto v) { c.chunk_store_dir = v; }},
      {"chunk_disk_mb",
       [](EngineConfig& c, auto k, auto v) { c.chunk_disk_mb = static_cast<std::size_t>(to_int(k, v)); }},
      {"chunk_device_mb", [](EngineConfig& c, auto k,
                             auto v) { c.session.chunk_device_mb = static_cast<std::size_t>(to_int(k, v)); }},
      {"chunk_pinned_mb", [](EngineConfig& c, auto k,
                             auto v) { c.session.chunk_pinned_mb = static_cast<std::size_t>(to_int(k, v)); }},
      {"fill_chunk_store",
       [](EngineConfig& c, auto k, auto v) {
         check(v == "on" || v == "off", ErrorCode::kInvalidArgument, std::string(k) + " must be on or off");
         c.session.fill_chunk_store = v == "on";
       }},
      {"retention_s", [](EngineConfig& c, auto k, auto v) { c.retention_s = to_number(k, v); }},
      {"half_life_s", [](EngineConfig& c, auto k, auto v) { c.half_life_s = to_number(k, v); }},
      {"block_size", [](EngineConfig& c, auto k, auto v) { c.session.block_size = to_int(k, v); }},
      {"kv_blocks", [](EngineConfig& c, auto k, auto v) { c.session.kv_blocks = to_int(k, v); }},
      {"kv_memory_mb", [](EngineConfig& c, auto k,
                          auto v) { c.session.kv_memory_mb = static_cast<std::size_t>(to_int(k, v)); }},
      {"max_batch_tokens",
       [](EngineConfig& c, auto k, auto v) { c.session.max_batch_tokens = to_int(k, v); }},
      {"max_sequences", [](EngineConfig& c, auto k, auto v) { c.session.max_sequences = to_int(k, v); }},
      {"host_cache_blocks",
       [](EngineConfig& c, auto k, auto v) { c.session.host_cache_blocks = to_int(k, v); }},
      {"swap_blocks", [](EngineConfig& c, auto k, auto v) { c.session.swap_blocks = to_int(k, v); }},
      {"prefix_caching",
       [](EngineConfig& c, auto k, auto v) {
         check(v == "on" || v == "off", ErrorCode::kInvalidArgument, std::string(k) + " must be on or off");
         c.session.prefix_caching = v == "on";
       }},
      {"preemption",
       [](EngineConfig& c, auto k, auto v) {
         check(v == "recompute" || v == "swap", ErrorCode::kInvalidArgument,
               std::string(k) + " must be recompute or swap");
         c.session.preemption = v == "swap" ? Preemption::kSwap : Preemption::kRecompute;
       }},
  };
  std::size_t pos = 0;
  while (pos < settings.size()) {
    const std::size_t start = settings.find_first_not_of(' ', pos);
    if (start == std::string_view::npos) break;
    const std::size_t end = std::min(settings.find(' ', start), settings.size());
    const std::string_view item = settings.substr(start, end - start);
    const std::size_t eq = item.find('=');
    check(eq != std::string_view::npos && eq > 0, ErrorCode::kInvalidArgument,
          "engine setting '" + std::string(item) + "' is not key=value");
    const std::string_view key = item.substr(0, eq);
    auto it = setters.find(key);
    check(it != setters.end(), ErrorCode::kInvalidArgument,
          "unknown engine setting '" + std::string(key) + "'");
    it->second(*this, key, item.substr(eq + 1));
    pos = end;
  }
}

namespace {

// The reuse policy checked first (a bad name fails before any store is made), then the store.
EngineConfig with_chunk_store(const std::shared_ptr<const Model>& model, EngineConfig c) {
  check(model != nullptr, ErrorCode::kInvalidArgument, "Engine needs a model");
  (void)make_reuse_policy(c.reuse, c.recompute_ratio < 0 ? std::nullopt : std::optional(c.recompute_ratio));
  if (c.reuse == "prefix") {
    c.session.chunk_store = nullptr;
  } else if (c.session.chunk_store == nullptr) {
    check(c.chunk_store_mb > 0, ErrorCode::kInvalidArgument, "chunk_store_mb must be > 0");
    ChunkStore::Config sc;
    sc.model_id = model_fingerprint(*model);
    sc.host_capacity_bytes = c.chunk_store_mb << 20;
    sc.disk_dir = c.chunk_store_dir;
    sc.disk_capacity_bytes = c.chunk_disk_mb << 20;
    c.session.chunk_store = std::make_shared<ChunkStore>(std::move(sc));
  }
  return c;
}

}  // namespace

Engine::Engine(std::shared_ptr<const Model> model, EngineConfig config)
    : config_(with_chunk_store(model, std::move(config))), impl_(make_impl(model, config_)) {
  if (config_.token_budget == 0) config_.token_budget = default_budget(config_);
}
Engine::~Engine() = default;
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;

std::vector<std::string> Engine::batching_policies() {
  return {"prefill-first", "stall-free", "prefix-grouped", "packed"};
}
std::vector<std::string> Engine::eviction_policies() {
  return {"lru", "prefix-lifetime", "cost-aware", "priority"};
}
std::vector<std::string> Engine::reuse_policies() {
  return chunkwise::reuse_policies();
}

RequestId Engine::submit(Request request) {
  return impl_->submit(std::move(request));
}
RequestId Engine::fork(RequestId parent, SamplingParams sampling, std::string label) {
  return impl_->fork(parent, sampling, std::move(label));
}
bool Engine::cancel(RequestId id) {
  return impl_->cancel(id);
}
StepResult Engine::step() {
  return impl_->step();
}
std::vector<FinishedRequest> Engine::take_finished() {
  return impl_->take_finished();
}
void Engine::clear_prefix_cache() {
  impl_->clear_prefix_cache();
}
bool Engine::has_work() const {
  return impl_->has_work();
}
std::size_t Engine::num_running() const {
  return impl_->num_running();
}
std::size_t Engine::num_waiting() const {
  return impl_->num_waiting();
}
const SessionMetrics& Engine::metrics() const {
  return impl_->metrics();
}
const KvMetrics& Engine::kv_metrics() const {
  return impl_->kv_metrics();
}
KvUsage Engine::kv_usage() const {
  return impl_->kv_usage();
}
std::string Engine::check_kv_invariants() const {
  return impl_->check_kv_invariants();
}
double Engine::now() const {
  return impl_->now();
}

}  // namespace chunkwise
