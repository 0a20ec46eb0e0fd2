// The KV memory layer on the real model: the prefix cache, every eviction policy under memory
// pressure, swap preemption, the host tier, forks and cancellation change no greedy output.
#include <algorithm>
#include <cstdio>
#include <map>

#include "chunkwise/policy/eviction/cost_aware_eviction.hpp"
#include "chunkwise/policy/eviction/prefix_lifetime_eviction.hpp"
#include "chunkwise/policy/eviction/priority_eviction.hpp"
#include "model_fixture.hpp"
#include "session_runner.hpp"

namespace {

using chunkwise::KvMetrics;
using chunkwise::Request;
using chunkwise::SessionConfig;
using chunkwise::SessionMetrics;
using chunkwise::test::Outputs;
using chunkwise::test::run_waves;

// Two system prompts (about 150 and 250 tokens), each followed by several questions: an
// assistant's traffic in small. The first wave warms the cache, the second reuses it.
std::vector<std::vector<Request>> shared_prefix_waves(const chunkwise::Model& model, int max_new) {
  std::string sys[2] = {"You are a careful assistant for a railway company. ",
                        "You answer questions about cooking. "};
  for (int k = 0; k < 12; ++k) sys[0] += "Rule " + std::to_string(k) + ": be polite, precise and brief. ";
  for (int k = 0; k < 20; ++k)
    sys[1] += "Tip " + std::to_string(k) + ": taste as you go and keep knives sharp. ";
  const char* questions[] = {"When does the first train leave?", "How do I boil an egg?",
                             "What is a sleeper car?",           "Why does bread rise?",
                             "Can I bring a bicycle?",           "How long do I rest a steak?"};
  std::vector<std::vector<Request>> waves(2);
  for (int i = 0; i < 12; ++i) {
    Request r;
    r.label = "q" + std::to_string(i);
    r.prompt_tokens = model.tokenizer().encode(sys[i % 2] + "Question: " + questions[i % 6] + " Answer:");
    r.max_new_tokens = max_new;
    waves[i < 4 ? 0 : 1].push_back(std::move(r));
  }
  return waves;
}

SessionConfig roomy(bool prefix_caching) {
  SessionConfig c;
  c.kv_blocks = 512;
  c.prefix_caching = prefix_caching;
  return c;
}

// The reference: the waves with the cache off, computed once per output length for all tests.
const Outputs& cold_outputs(const std::shared_ptr<const chunkwise::Model>& model, int max_new) {
  static std::map<int, Outputs> cache;
  auto it = cache.find(max_new);
  if (it == cache.end())
    it = cache.emplace(max_new, run_waves(model, shared_prefix_waves(*model, max_new), roomy(false))).first;
  return it->second;
}

}  // namespace

TEST_CASE("prefix cache on and off give the same greedy outputs", "[kv][prefix]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const auto waves = shared_prefix_waves(*model, 8);
  const Outputs& cold = cold_outputs(model, 8);
  KvMetrics kv;
  SessionMetrics m;
  const Outputs warm = run_waves(model, waves, roomy(true), chunkwise::LruEviction{}, &m, &kv);
  CHECK(warm == cold);
  std::printf(
      "prefix cache: %lld of %lld prompt tokens hit (%.1f%%), %lld prompt tokens cached at admission\n",
      static_cast<long long>(kv.prefix_hit_tokens), static_cast<long long>(kv.prefix_query_tokens),
      100.0 * kv.hit_rate(), static_cast<long long>(m.prompt_tokens_cached));
  CHECK(kv.prefix_queries == 12);
  CHECK(kv.hit_rate() > 0.5);
  CHECK(m.prompt_tokens_computed + m.prompt_tokens_cached == m.prompt_tokens);
}

TEMPLATE_TEST_CASE("every eviction policy under memory pressure keeps the outputs", "[kv][eviction]",
                   chunkwise::LruEviction, chunkwise::PrefixLifetimeEviction, chunkwise::CostAwareEviction,
                   chunkwise::PriorityEviction) {
  CHUNKWISE_REQUIRE_MODEL(model);
  const auto waves = shared_prefix_waves(*model, 8);
  const Outputs& cold = cold_outputs(model, 8);
  SessionConfig tight;
  tight.kv_blocks = 48;  // a few requests at a time: cached prefixes must be evicted
  KvMetrics kv;
  CHECK(run_waves(model, waves, tight, TestType{}, nullptr, &kv) == cold);
  CHECK(kv.evictions > 0);
  CHECK(kv.prefix_hit_tokens > 0);
}

TEST_CASE("the host tier brings evicted prefixes back and keeps the outputs", "[kv][host]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  auto waves = shared_prefix_waves(*model, 4);
  // Between the two waves, unrelated prompts push every cached prefix block out of the device.
  std::vector<Request> flood;
  for (int i = 0; i < 3; ++i) {
    Request r;
    r.label = "flood" + std::to_string(i);
    std::string text;
    for (int k = 0; k < 40; ++k)
      text.append("Unrelated line ").append(std::to_string(100 * i + k)).append(". ");
    r.prompt_tokens = model->tokenizer().encode(text);
    r.max_new_tokens = 2;
    flood.push_back(std::move(r));
  }
  waves.insert(waves.begin() + 1, flood);
  const Outputs cold = run_waves(model, waves, roomy(false));
  SessionConfig c;
  c.kv_blocks = 48;
  c.host_cache_blocks = 256;
  KvMetrics kv;
  CHECK(run_waves(model, waves, c, chunkwise::LruEviction{}, nullptr, &kv) == cold);
  CHECK(kv.host_saves > 0);
  CHECK(kv.host_hit_tokens > 0);
}

TEST_CASE("a forked request shares blocks, copies on write and decodes the same", "[kv][fork]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  Request r;
  r.label = "parent";
  r.prompt_tokens = model->tokenizer().encode("The three primary colours are");  // partial last block
  r.max_new_tokens = 20;
  r.stop_at_eos = false;
  const Outputs cold = run_waves(model, {{r}}, roomy(true));

  chunkwise::InferenceSession<> session(model, roomy(true));
  const auto parent = session.submit(r);
  while (session.has_work()) {
    session.step();
    if (session.num_running() == 1 && session.metrics().generated_tokens == 3) {
      session.fork(parent, {}, "greedy-fork");
      chunkwise::SamplingParams hot;
      hot.temperature = 1.0f;
      hot.seed = 99;
      session.fork(parent, hot, "sampled-fork");
    }
    REQUIRE(session.kv_cache().check_invariants().empty());
  }
  Outputs out;
  for (const auto& f : session.take_finished()) out[f.label] = f.output_tokens;
  REQUIRE(out.size() == 3);
  CHECK(out.at("parent") == cold.at("parent"));
  // A fork's output starts with the parent's tokens so far; the greedy one then continues identically.
  CHECK(out.at("greedy-fork") == cold.at("parent"));
  const auto& sampled = out.at("sampled-fork");
  REQUIRE(sampled.size() > 3);
  CHECK(std::equal(sampled.begin(), sampled.begin() + 3, cold.at("parent").begin()));
  CHECK(sampled != cold.at("parent"));
  CHECK(session.kv_metrics().cow_copies >= 2);
  CHECK(session.kv_usage().in_use == 0);
}

TEST_CASE("cancelling a request returns its blocks and leaves the others alone", "[kv][cancel]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const auto waves = shared_prefix_waves(*model, 8);
  const Outputs& cold = cold_outputs(model, 8);
  chunkwise::InferenceSession<> session(model, roomy(true));
  std::vector<chunkwise::RequestId> ids;
  for (const auto& r : waves[1]) ids.push_back(session.submit(r));
  session.step();
  CHECK(session.cancel(ids[2]));  // running
  CHECK(session.cancel(ids[7]));  // maybe queued, maybe running
  CHECK_FALSE(session.cancel(12345));
  while (session.has_work()) {
    session.step();
    REQUIRE(session.kv_cache().check_invariants().empty());
  }
  int cancelled = 0;
  for (const auto& f : session.take_finished()) {
    if (f.reason == chunkwise::FinishReason::kCancelled) {
      ++cancelled;
      continue;
    }
    CHECK(f.output_tokens == cold.at(f.label));
  }
  CHECK(cancelled == 2);
  CHECK(session.kv_usage().in_use == 0);
}

TEST_CASE("requests share cached blocks only within one cache salt", "[kv][salt]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  Request a;
  a.label = "a";
  a.prompt_tokens = model->tokenizer().encode(std::string(400, 'x') + " and then?");
  a.max_new_tokens = 2;
  Request b = a, c = a;
  b.label = "b";
  b.cache_salt = "tenant-2";
  c.label = "c";
  KvMetrics kv;
  run_waves(model, {{a}, {b}}, roomy(true), chunkwise::LruEviction{}, nullptr, &kv);
  CHECK(kv.prefix_hit_tokens == 0);
  run_waves(model, {{a}, {c}}, roomy(true), chunkwise::LruEviction{}, nullptr, &kv);
  CHECK(kv.prefix_hit_tokens > 0);
}
