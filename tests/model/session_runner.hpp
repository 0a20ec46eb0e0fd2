// Runs requests to completion in one InferenceSession and returns each request's output tokens,
// checking the KV cache's invariants after every step and that every block comes back.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "chunkwise/sched/inference_session.hpp"

namespace chunkwise::test {

using Outputs = std::map<std::string, std::vector<TokenId>>;

// Submits `waves` one after the other: a wave is submitted once the previous one finished, so
// later waves can hit what earlier ones cached.
template <class Eviction = LruEviction>
Outputs run_waves(const std::shared_ptr<const Model>& model, const std::vector<std::vector<Request>>& waves,
                  SessionConfig cfg, Eviction eviction = {}, SessionMetrics* metrics = nullptr,
                  KvMetrics* kv_metrics = nullptr) {
  InferenceSession<StallFreeBatching, Eviction> session(model, std::move(cfg), StallFreeBatching(),
                                                        std::move(eviction));
  Outputs out;
  for (const auto& wave : waves) {
    for (const auto& r : wave) session.submit(r);
    while (session.has_work()) {
      session.step();
      const std::string broken = session.kv_cache().check_invariants();
      INFO(broken);
      REQUIRE(broken.empty());
    }
    for (const FinishedRequest& f : session.take_finished()) out[f.label] = f.output_tokens;
  }
  CHECK(session.kv_usage().in_use == 0);  // every block came back
  session.clear_prefix_cache();
  CHECK(session.block_pool().used() == 0);  // and with the cache cleared, every block is free
  if (metrics) *metrics = session.metrics();
  if (kv_metrics) *kv_metrics = session.kv_metrics();
  return out;
}

template <class Eviction = LruEviction>
Outputs run_requests(const std::shared_ptr<const Model>& model, const std::vector<Request>& reqs,
                     SessionConfig cfg, SessionMetrics* metrics = nullptr) {
  return run_waves<Eviction>(model, {reqs}, std::move(cfg), {}, metrics);
}

}  // namespace chunkwise::test
