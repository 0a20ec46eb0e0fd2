// Sparse prefill on the real model (CPU backend): at full density every policy gives the dense
// logits, whole prompt or chunked; at real densities the masks are used and cost what they say.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "chunkwise/backend/prompt_logits.hpp"
#include "chunkwise/policy/sparse/any_sparse_attention.hpp"
#include "chunkwise/sched/engine.hpp"
#include "model_fixture.hpp"

using namespace chunkwise;

namespace {

std::vector<TokenId> long_prompt(const Model& model, int n) {
  std::string text;
  for (int i = 0; static_cast<int>(model.tokenizer().encode(text).size()) < n; ++i)
    text += "Section " + std::to_string(i) + ": the scheduler admits request " + std::to_string(i * 7 % 13) +
            " when its prompt of " + std::to_string(100 + i * 37 % 900) + " tokens fits the budget. ";
  std::vector<TokenId> ids = model.tokenizer().encode(text);
  ids.resize(static_cast<std::size_t>(n));
  return ids;
}

int argmax(const float* row, int vocab) {
  return static_cast<int>(std::max_element(row, row + vocab) - row);
}

}  // namespace

TEST_CASE("every sparse policy at full density gives the dense logits on the real model", "[model][sparse]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const int vocab = model->config().vocab;
  // Full size: 1,300 tokens, chunks of 700; CI size: 832 tokens (13 tiles of 64), chunks of 448.
  const bool full = chunkwise::test::full_size();
  const int n = full ? 1300 : 832;
  const std::vector<TokenId> ids = long_prompt(*model, n);
  const int first = n - 64;
  for (const int chunk : {0, full ? 700 : 448}) {
    const std::vector<float> dense = prompt_logits(model, ids, 16, nullptr, nullptr, chunk, first);
    for (const std::string spec :
         {"streaming:min_kv_len=0,window=100000", "block-topk:min_kv_len=0,top_k=1000",
          "vertical-slash:min_kv_len=0,vertical=100000,slash=100000",
          "flex-prefill:min_kv_len=0,min_budget=100000", "streaming:min_kv_len=0,window=100000,tile=128"}) {
      CAPTURE(spec, chunk);
      PolicySelector<AnySparseAttention> sel(make_sparse_policy(spec));
      const std::vector<float> sparse = prompt_logits(model, ids, 16, nullptr, &sel, chunk, first);
      CHECK(sel.stats().selections == model->config().n_layers * (chunk > 0 ? 2 : 1));
      CHECK(sel.stats().density() == Approx(1.0));
      double worst = 0;
      int agree = 0;
      for (std::size_t i = 0; i < dense.size(); ++i)
        worst = std::max(worst, std::abs(double(dense[i]) - sparse[i]));
      for (int r = 0; r < 64; ++r)
        agree +=
            argmax(&dense[std::size_t(r) * vocab], vocab) == argmax(&sparse[std::size_t(r) * vocab], vocab);
      CHECK(worst < 2e-3);  // fp32, same keys, another summation order
      CHECK(agree == 64);
    }
  }
}

TEST_CASE("a sparse policy on the real model computes fewer tiles and stays close to dense",
          "[model][sparse]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const int vocab = model->config().vocab;
  const std::vector<TokenId> ids = long_prompt(*model, 2048);
  const int first = 2048 - 64;
  const std::vector<float> dense = prompt_logits(model, ids, 16, nullptr, nullptr, 0, first);
  PolicySelector<AnySparseAttention> sel(make_sparse_policy("streaming:min_kv_len=0,sink=64,window=256"));
  const std::vector<float> sparse = prompt_logits(model, ids, 16, nullptr, &sel, 0, first);
  CHECK(sel.stats().density() < 0.4);  // rows keep about 6 of their 16 tiles on average
  CHECK(sparse != dense);              // the mask is really used
  int agree = 0;
  for (int r = 0; r < 64; ++r)
    agree += argmax(&dense[std::size_t(r) * vocab], vocab) == argmax(&sparse[std::size_t(r) * vocab], vocab);
  CHECK(agree >= 32);  // a local window keeps most next-token choices on repetitive text
}

TEST_CASE("the engine runs a sparse policy with chunked prefill and reports its density", "[model][sparse]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  EngineConfig ec;
  ec.batching = "stall-free";
  ec.token_budget = 512;
  ec.sparse = "flex-prefill:min_kv_len=512,min_budget=256";
  Engine engine(model, ec);
  Request r;
  r.prompt_tokens = long_prompt(*model, 1800);
  r.max_new_tokens = 4;
  engine.submit(r);
  while (engine.has_work()) engine.step();
  const auto done = engine.take_finished();
  REQUIRE(done.size() == 1);
  CHECK(done[0].output_tokens.size() == 4);
  // Chunks of 512 end at 512, 1024, 1536 and 1800 keys: each is probed (>= 512 keys) in every layer.
  CHECK(engine.metrics().sparse.selections == 4 * model->config().n_layers);
  CHECK(engine.metrics().sparse.density() < 1.0);
}
