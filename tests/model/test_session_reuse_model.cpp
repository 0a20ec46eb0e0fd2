// Chunk reuse through the session on the default model (CPU): a RAG prompt in segments under blend
// reuse at ratio 1 gives the full prefill's greedy tokens with both chunks loaded from the store;
// under full reuse the chunks' rows are kept, not computed.
#include <memory>
#include <string>
#include <vector>

#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/policy/reuse/blend_reuse.hpp"
#include "chunkwise/policy/reuse/full_reuse.hpp"
#include "chunkwise/sched/inference_session.hpp"
#include "model_fixture.hpp"

using namespace chunkwise;

namespace {

Request rag_request() {
  Request r;
  r.max_new_tokens = 16;
  r.segments = {
      {SegmentKind::kPrefix,
       "<|im_start|>system\nAnswer the question from the passages.<|im_end|>\n<|im_start|>user\n",
       {}},
      {SegmentKind::kChunk,
       "Passage: The Varnholm lighthouse first shone in 1847. It was built by Odile Brannock, an engineer "
       "from "
       "the harbour town of Kessrow, who designed its copper lantern and its spiral stair of grey "
       "granite.\n\n",
       {}},
      {SegmentKind::kChunk,
       "Passage: The Tessel beetle lives only on the island of Marrow Key. Its shell is a deep violet and it "
       "feeds on the salt moss that grows on the northern cliffs, where the colony was first counted in "
       "1911.\n\n",
       {}},
      {SegmentKind::kQuestion,
       "Question: Who built the Varnholm lighthouse?<|im_end|>\n<|im_start|>assistant\n",
       {}},
  };
  return r;
}

template <class Reuse>
FinishedRequest run(const std::shared_ptr<const Model>& model, std::shared_ptr<ChunkStore> store, Reuse reuse,
                    SessionMetrics* metrics = nullptr) {
  SessionConfig config;
  config.chunk_store = std::move(store);
  InferenceSession<StallFreeBatching, LruEviction, DenseAttention, Reuse> s(
      model, config, StallFreeBatching(), LruEviction(), DenseAttention(), reuse);
  s.submit(rag_request());
  while (s.has_work()) s.step();
  auto done = s.take_finished();
  REQUIRE(done.size() == 1);
  if (metrics != nullptr) *metrics = s.metrics();
  return done.front();
}

}  // namespace

TEST_CASE("default model: blend reuse at ratio 1 in the session gives the full prefill's answer",
          "[model][reuse]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const FinishedRequest full = run(model, nullptr, BlendReuse());  // no store: a plain prefill
  ChunkStore::Config sc;
  sc.model_id = model_fingerprint(*model);
  auto store = std::make_shared<ChunkStore>(sc);
  BlendReuse::Params exact;
  exact.ratio = 1.0;
  exact.min_tokens = 0;
  SessionMetrics m;
  const FinishedRequest blend = run(model, store, BlendReuse(exact), &m);
  CHECK(m.reuse.chunks_stored == 2);
  CHECK(m.reuse.chunks_loaded == 2);
  CHECK(blend.output_tokens == full.output_tokens);

  const FinishedRequest reused = run(model, store, FullReuse(), &m);
  CHECK(m.reuse.chunks_stored == 0);  // the store is warm
  CHECK(reused.prompt_tokens_reused == m.reuse.tokens_loaded);
  CHECK(reused.prompt_tokens_reused > 60);
}
