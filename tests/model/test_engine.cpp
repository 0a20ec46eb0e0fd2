// Engine on the real model: every batching policy, token budgets from 16 to 4096, the prefix cache
// on and off give the same greedy outputs (batching decides when tokens are computed, never what).
#include <filesystem>
#include <map>

#include "chunkwise/sched/engine.hpp"
#include "chunkwise/sched/workload.hpp"
#include "model_fixture.hpp"

namespace {

using Outputs = std::map<std::string, std::vector<chunkwise::TokenId>>;

Outputs run_engine(const std::shared_ptr<const chunkwise::Model>& model, const std::string& settings,
                   const std::vector<chunkwise::Request>& reqs,
                   chunkwise::SessionMetrics* metrics = nullptr) {
  chunkwise::EngineConfig c;
  c.session.kv_memory_mb = chunkwise::test::kRoomyKvMb;  // settings may ask for more, or set kv_blocks
  c.apply(settings);
  chunkwise::Engine engine(model, c);
  for (const auto& r : reqs) engine.submit(r);
  Outputs out;
  // A scheduler that stops making progress (a livelock) fails here instead of hanging the suite:
  // no run needs more steps than prompt and output tokens together (a text prompt has no more
  // tokens than bytes; 64 covers the chat template).
  std::size_t bound = 16;
  for (const auto& r : reqs)
    bound += r.prompt_tokens.size() + r.prompt_text.size() + 64 + static_cast<std::size_t>(r.max_new_tokens);
  for (std::size_t steps = 0; engine.has_work(); ++steps) {
    REQUIRE(steps < bound);
    engine.step();
    const std::string broken = engine.check_kv_invariants();
    INFO(broken);
    REQUIRE(broken.empty());
  }
  for (auto& f : engine.take_finished()) out[f.label] = f.output_tokens;
  CHECK(engine.kv_usage().in_use == 0);
  if (metrics != nullptr) *metrics = engine.metrics();
  return out;
}

// Two shared prefixes and a few loners, short outputs.
std::vector<chunkwise::Request> requests(const chunkwise::Model& model) {
  const std::string manual =
      "Manual: the pump must be primed before use, the filter cleaned weekly, "
      "and the valve closed when the tank is full. ";
  std::vector<chunkwise::Request> out;
  const char* asks[] = {"How often is the filter cleaned?",
                        "When is the valve closed?",
                        "What comes first?",
                        "Name a part.",
                        "Is priming needed?",
                        "Say hi."};
  for (int i = 0; i < 6; ++i) {
    chunkwise::Request r;
    r.label = std::to_string(i);  // "r" + to_string trips GCC 12 -Wrestrict here
    std::string text = i < 4 ? manual + manual : std::string();
    text.append(asks[i]);
    r.prompt_tokens = model.tokenizer().encode(text);
    r.max_new_tokens = 6;
    r.priority = i % 2;
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

TEST_CASE("every batching policy and token budget gives the same outputs", "[engine][invariance]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const auto reqs = requests(*model);
  const Outputs reference = run_engine(model, "batching=prefill-first prefix_caching=off", reqs);
  REQUIRE(reference.size() == reqs.size());
  for (const char* batching : {"prefill-first", "stall-free", "prefix-grouped", "packed"})
    for (const char* budget : {"16", "4096"})
      for (const char* cache : {"on", "off"}) {
        std::string settings = "batching=";  // appended piecewise: GCC 12's -Wrestrict misfires on a + b + c
        settings.append(batching).append(" token_budget=").append(budget);
        settings.append(" prefix_caching=").append(cache).append(" eviction=prefix-lifetime");
        INFO(settings);
        CHECK(run_engine(model, settings, reqs) == reference);
      }
}

TEST_CASE("a pool too small for the policy's admissions still finishes every request", "[engine][kv]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  // Eight requests over two ~450-token prefixes in a pool of 100 blocks (1,600 tokens): admitting
  // a request takes its cached prefix out of the evictable blocks the policy counted on. Before
  // the session re-planned without admissions, such a step ran nothing, forever.
  std::string doc[2];
  for (int k = 0; k < 45; ++k)
    doc[0].append("Section ").append(std::to_string(k)).append(" of the pump manual. ");
  for (int k = 0; k < 45; ++k) doc[1].append("Clause ").append(std::to_string(k)).append(" of the lease. ");
  std::vector<chunkwise::Request> reqs;
  for (int i = 0; i < 8; ++i) {
    chunkwise::Request r;
    r.label = std::to_string(i);
    std::string text = doc[i % 2];
    text.append("Question ").append(std::to_string(i)).append(": summarise.");
    r.prompt_tokens = model->tokenizer().encode(text);
    r.max_new_tokens = 3;
    reqs.push_back(std::move(r));
  }
  const Outputs reference = run_engine(model, "batching=stall-free prefix_caching=off", reqs);
  for (const char* batching : {"prefill-first", "stall-free", "prefix-grouped", "packed"}) {
    std::string settings = "kv_blocks=100 eviction=prefix-lifetime batching=";
    settings.append(batching);
    INFO(settings);
    CHECK(run_engine(model, settings, reqs) == reference);
  }
}

TEST_CASE("prefill-first + lru under preemption readmits without a livelock", "[engine][kv]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  // Two documents of bench/workloads/shared_prefix.jsonl, 24 questions, 800 output tokens, in 75
  // blocks: decodes outgrow the pool, requests are preempted and come back over their own cached
  // blocks. When admission did not count those blocks (pinned, they leave the free pool) nor the
  // readmitted request's next decode block, one request was readmitted and preempted at every step
  // with no decode in between, forever (run_engine's step bound catches that).
  const auto file = std::filesystem::path(CHUNKWISE_TEST_DATA) / ".." / ".." / "bench" / "workloads" /
                    "shared_prefix.jsonl";
  std::vector<chunkwise::Request> reqs;
  for (auto& item : chunkwise::read_workload(file)) {
    const std::string& id = item.request.label;
    if (id.rfind("library-", 0) == 0 || id.rfind("chickens-", 0) == 0)
      reqs.push_back(std::move(item.request));
  }
  REQUIRE(reqs.size() == 24);
  // The reference reuses the two documents' cached blocks (the prefix cache on and off give the
  // same outputs: test_prefix_cache.cpp) in a pool that needs no preemption.
  chunkwise::SessionMetrics m;
  const Outputs reference = run_engine(model, "batching=stall-free kv_memory_mb=512", reqs, &m);
  REQUIRE(m.preemptions == 0);
  CHECK(run_engine(model, "batching=prefill-first eviction=lru kv_blocks=75", reqs) == reference);
}
