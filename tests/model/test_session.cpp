// InferenceSession on the real model: a request's output does not depend on the batch it ran
// in, on how its prompt was chunked, or on being preempted; bad requests are refused without
// disturbing accepted ones.
#include <map>

#include "chunkwise/sched/inference_session.hpp"
#include "model_fixture.hpp"
#include "session_runner.hpp"

namespace {

using chunkwise::FinishedRequest;
using chunkwise::InferenceSession;
using chunkwise::Request;
using chunkwise::SessionConfig;

// 16 prompts of mixed lengths (a handful of tokens to several hundred).
std::vector<Request> mixed_requests(const chunkwise::Model& model, int max_new) {
  const char* topics[] = {"the moon", "bread", "rivers", "chess", "volcanoes", "bees", "trains", "the piano"};
  std::vector<Request> out;
  for (int i = 0; i < 16; ++i) {
    std::string text = "Tell me about " + std::string(topics[i % 8]) + ".";
    for (int k = 0; k < (i * 7) % 23; ++k)
      text += " Please be detailed and mention history, science and everyday life, item " +
              std::to_string(k) + ".";
    Request r;
    r.label = "r" + std::to_string(i);
    r.prompt_tokens = model.tokenizer().encode(text);
    r.max_new_tokens = max_new;
    if (i % 4 == 3) {  // a few sampled requests: their draws depend only on (seed, step)
      r.sampling.temperature = 0.8f;
      r.sampling.top_p = 0.9f;
      r.sampling.seed = 1234 + static_cast<std::uint64_t>(i);
    }
    out.push_back(std::move(r));
  }
  return out;
}

// The odd-numbered half of mixed_requests(): short, middle and long prompts, and all four sampled
// requests. At CI size the slow cases check these (full_size(): all 16).
std::vector<Request> ci_share(std::vector<Request> reqs) {
  if (chunkwise::test::full_size()) return reqs;
  std::vector<Request> out;
  for (std::size_t i = 1; i < reqs.size(); i += 2) out.push_back(std::move(reqs[i]));
  return out;
}

// Output lengths of the three cases below at full size; at CI size all use 16 and share one
// reference batch.
int max_new(int full) {
  return chunkwise::test::full_size() ? full : 16;
}

chunkwise::test::Outputs run(const std::shared_ptr<const chunkwise::Model>& model,
                             const std::vector<Request>& reqs, SessionConfig cfg,
                             std::int64_t* preemptions = nullptr) {
  if (cfg.kv_blocks == 0) cfg.kv_memory_mb = chunkwise::test::kRoomyKvMb;
  chunkwise::SessionMetrics m;
  auto out = chunkwise::test::run_requests(model, reqs, std::move(cfg), &m);
  if (preemptions) *preemptions = m.preemptions;
  return out;
}

// The 16 mixed requests in one batch without memory pressure, run once per output length.
const chunkwise::test::Outputs& batched_reference(const std::shared_ptr<const chunkwise::Model>& model,
                                                  int max_new_tokens) {
  static std::map<int, chunkwise::test::Outputs> cache;
  auto it = cache.find(max_new_tokens);
  if (it == cache.end()) {
    std::int64_t preemptions = -1;
    auto out = run(model, mixed_requests(*model, max_new_tokens), {}, &preemptions);
    REQUIRE(out.size() == 16);
    REQUIRE(preemptions == 0);
    it = cache.emplace(max_new_tokens, std::move(out)).first;
  }
  return it->second;
}

// The reference outputs of `reqs`, requests of mixed_requests().
chunkwise::test::Outputs reference_of(const chunkwise::test::Outputs& batched,
                                      const std::vector<Request>& reqs) {
  chunkwise::test::Outputs out;
  for (const auto& r : reqs) out[r.label] = batched.at(r.label);
  return out;
}

}  // namespace

TEST_CASE("a request's output is the same alone and in a batch of 16", "[session][invariance]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const int n = max_new(24);
  const auto& batched = batched_reference(model, n);
  for (const auto& r : ci_share(mixed_requests(*model, n))) {
    INFO("request " << r.label << " with " << r.prompt_tokens.size() << " prompt tokens");
    const auto alone = run(model, {r}, {});
    CHECK(alone.at(r.label) == batched.at(r.label));
  }
}

TEST_CASE("chunked prefill and tiny KV blocks give the same output", "[session][invariance]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const int n = max_new(12);
  const auto reqs = mixed_requests(*model, n);
  const auto& reference = batched_reference(model, n);
  SessionConfig chunked;
  chunked.max_batch_tokens = 37;  // prompts split across many steps, mixed with decodes
  chunked.block_size = 5;
  CHECK(run(model, reqs, chunked) == reference);
}

TEST_CASE("preemption under KV pressure loses nothing and changes nothing", "[session][kv]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const int n = max_new(16);
  const auto reqs = ci_share(mixed_requests(*model, n));
  const auto reference = reference_of(batched_reference(model, n), reqs);
  std::size_t longest = 0;
  for (const auto& r : reqs)
    longest = std::max(longest, r.prompt_tokens.size() + static_cast<std::size_t>(n));
  SessionConfig tight;
  tight.block_size = 16;
  tight.kv_blocks = static_cast<int>((longest + 15) / 16) + 4;  // room for one long request and a bit
  std::int64_t preemptions = 0;
  CHECK(run(model, reqs, tight, &preemptions) == reference);
  CHECK(preemptions > 0);
  SECTION("swapped to host RAM instead of recomputed") {
    tight.preemption = chunkwise::Preemption::kSwap;
    chunkwise::SessionMetrics m;
    CHECK(chunkwise::test::run_requests(model, reqs, tight, &m) == reference);
    CHECK(m.swap_preemptions > 0);
  }
}

TEST_CASE("bad requests are refused with a typed error and leave the session intact", "[session][errors]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  using chunkwise::Error;
  using chunkwise::ErrorCode;
  SessionConfig cfg;
  cfg.kv_blocks = 64;
  InferenceSession<> session(model, cfg);
  Request good;
  good.prompt_text = "The capital of France is";
  good.max_new_tokens = 4;
  session.submit(good);
  auto code_of = [&](Request r) {
    try {
      session.submit(std::move(r));
    } catch (const Error& e) {
      return e.code();
    }
    FAIL("request was accepted");
    return ErrorCode::kBackend;
  };
  Request r = good;
  r.prompt_tokens = {1, model->config().vocab};
  CHECK(code_of(r) == ErrorCode::kTokenOutOfRange);
  r = good;
  r.prompt_tokens = {-1};
  CHECK(code_of(r) == ErrorCode::kTokenOutOfRange);
  r = good;
  r.max_new_tokens = model->config().max_context;
  CHECK(code_of(r) == ErrorCode::kContextOverflow);
  r = good;
  r.max_new_tokens = 64 * 16;  // more than the 64-block pool holds
  CHECK(code_of(r) == ErrorCode::kKvExhausted);
  r = good;
  r.max_new_tokens = 0;
  CHECK(code_of(r) == ErrorCode::kInvalidArgument);
  r = good;
  r.sampling.temperature = -1;
  CHECK(code_of(r) == ErrorCode::kInvalidArgument);
  r = good;
  r.prompt_text.clear();
  CHECK(code_of(r) == ErrorCode::kInvalidArgument);
  r = good;
  r.stop_tokens = {1 << 30};
  CHECK(code_of(r) == ErrorCode::kTokenOutOfRange);
  CHECK(session.num_waiting() == 1);
  while (session.has_work()) session.step();
  const auto done = session.take_finished();
  REQUIRE(done.size() == 1);
  CHECK(done[0].output_tokens.size() == 4);
}

TEST_CASE("chat requests stop at the end-of-turn token and decode to text", "[session]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  InferenceSession<> session(model);
  Request r;
  r.prompt_text = "What is the capital of France? Answer in one word.";
  r.chat = true;
  r.max_new_tokens = 48;
  session.submit(r);
  while (session.has_work()) session.step();
  const auto done = session.take_finished();
  REQUIRE(done.size() == 1);
  CHECK(done[0].reason == chunkwise::FinishReason::kStop);
  CHECK(done[0].output_text.find("Paris") != std::string::npos);
  CHECK(done[0].timings.ttft() > 0);
}
