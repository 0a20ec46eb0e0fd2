// Chunk reuse on the real model (CPU backend): a chunk's KV computed standalone and moved to another
// position has the keys of that position; a prompt [system][chunk 1][chunk 2][chunk 3][question]
// whose chunks' KV were computed standalone gets, through a selective forward, the full prefill's
// logits at ratio 1 (bit for bit), and next-token distributions that move towards them as the ratio
// grows. The KL numbers are printed for the report.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/backend/selective_recompute.hpp"
#include "model_fixture.hpp"

using namespace chunkwise;

namespace {

constexpr int kBlock = 16;

std::vector<std::int64_t> slots_of(std::int32_t first, std::int32_t n) {
  std::vector<std::int64_t> s;
  for (std::int32_t i = 0; i < n; ++i) s.push_back(first + i);
  return s;
}

// The rows tokens at positions first.. of one sequence whose cache uses pages 0, 1, ... in order
// (slot == position), with the last row's logits.
ForwardBatch prefill(std::span<const TokenId> tokens, std::int32_t first) {
  ForwardBatch b;
  b.tokens.assign(tokens.begin(), tokens.end());
  const auto n = static_cast<std::int32_t>(tokens.size());
  for (std::int32_t i = 0; i < n; ++i) {
    b.positions.push_back(first + i);
    b.slots.push_back(first + i);
  }
  const std::int32_t kv_len = first + n;
  const int pages = (kv_len + kBlock - 1) / kBlock;
  for (int p = 0; p < pages; ++p) b.pages.push_back(p);
  b.query_start = {0, n};
  b.page_start = {0, pages};
  b.kv_len = {kv_len};
  b.logit_rows = {n - 1};
  return b;
}

std::unique_ptr<CpuBackend> backend_for(const std::shared_ptr<const Model>& model, std::int64_t tokens) {
  return std::make_unique<CpuBackend>(model, static_cast<int>((tokens + kBlock - 1) / kBlock), kBlock);
}

// KL(p || q) of the next-token distributions softmax(p_logits), softmax(q_logits).
double kl(std::span<const float> p_logits, std::span<const float> q_logits) {
  auto log_softmax = [](std::span<const float> x) {
    const double m = *std::max_element(x.begin(), x.end());
    double sum = 0;
    for (const float v : x) sum += std::exp(v - m);
    std::vector<double> out;
    for (const float v : x) out.push_back(v - m - std::log(sum));
    return out;
  };
  const auto lp = log_softmax(p_logits), lq = log_softmax(q_logits);
  double d = 0;
  for (std::size_t i = 0; i < lp.size(); ++i) d += std::exp(lp[i]) * (lp[i] - lq[i]);
  return d;
}

// A RAG-style prompt: the parts are tokenized apart, so a chunk has the same ids alone and in place.
struct RagPrompt {
  std::vector<TokenId> system;
  std::vector<std::vector<TokenId>> chunks;
  std::vector<TokenId> question;

  [[nodiscard]] std::vector<TokenId> tokens() const {
    std::vector<TokenId> t = system;
    for (const auto& c : chunks) t.insert(t.end(), c.begin(), c.end());
    t.insert(t.end(), question.begin(), question.end());
    return t;
  }
  [[nodiscard]] std::int32_t chunk_begin(std::size_t i) const {
    auto at = static_cast<std::int32_t>(system.size());
    for (std::size_t j = 0; j < i; ++j) at += static_cast<std::int32_t>(chunks[j].size());
    return at;
  }
};

const char* const kPassages[] = {
    "The Harwick lighthouse stands on a granite spur at the mouth of the Tamsin estuary. It was first lit "
    "in 1842 with a ring of whale-oil lamps and silvered copper reflectors, which the keepers polished every "
    "morning. A Fresnel lens of the second order replaced the lamps in 1871, and the light could then be "
    "seen "
    "from twenty-two nautical miles on a clear night. Three keepers lived in the cottages below the tower, "
    "working four-hour watches so that the flame never went out. In the great storm of 1903 a wave broke the "
    "lantern glass and the head keeper, Ellen Marsh, kept a hand lamp burning in the gallery until dawn. The "
    "station was electrified in 1936, and it was fully automated in 1987, when the last keepers left the "
    "island. Today a small museum in the old oil store shows the original reflectors and the keepers' logs.",
    "Coffee plants grow best between the tropics, at altitudes where the days are warm and the nights are "
    "cool. Arabica, which makes up most of the world's specialty coffee, prefers elevations above one "
    "thousand "
    "metres and yields a sweeter, more acidic cup. Robusta tolerates heat and lowland pests and carries "
    "almost "
    "twice as much caffeine, which makes it bitter but popular in espresso blends. A young plant takes three "
    "to "
    "four years before it bears fruit. The cherries ripen unevenly, so on steep farms pickers pass the same "
    "bushes several times in a season, choosing only the red ones. After picking, the seeds are separated "
    "from "
    "the fruit either by washing, which gives a clean taste, or by drying the whole cherry in the sun, which "
    "gives heavier, fruitier flavours. The green beans are then sorted, bagged and shipped to roasters.",
    "Northwind Freight reported revenue of 412 million euros for the third quarter, up nine percent from a "
    "year "
    "earlier, as volumes on its Baltic routes recovered. Operating margin narrowed to 6.1 percent because "
    "fuel "
    "costs rose faster than the surcharges the company could pass on to customers. The board approved the "
    "purchase of four liquefied natural gas vessels, to be delivered in 2027, and said the investment would "
    "be "
    "financed from cash and a green bond. Chief executive Marta Lindqvist told analysts that the warehouse "
    "business in Gdansk had its best quarter since it opened, while the trucking unit lost money after a "
    "strike "
    "at the Rotterdam depot. The company kept its full-year guidance and will pay an interim dividend of "
    "0.45 "
    "euros per share in December.",
    "The Arctic tern makes the longest migration of any animal. Birds that breed in Greenland and Iceland "
    "fly "
    "south along the coasts of Europe and Africa, cross to the Weddell Sea in Antarctica, and return north "
    "by "
    "an S-shaped path through the middle of the Atlantic that follows the prevailing winds. Tracking devices "
    "weighing less than two grams showed that a single bird can cover more than seventy thousand kilometres "
    "in "
    "a year. Because terns live for thirty years or more, one bird may fly the distance to the Moon and back "
    "three times in its life. They feed on small fish and crustaceans, which they catch by hovering and then "
    "plunging into the water. Terns nest in colonies on the ground and defend their eggs fiercely, diving at "
    "any "
    "intruder, humans included.",
    "In the board game Harbourmaster, each player controls a fleet of three ships and a warehouse on the "
    "shore. "
    "On a turn a player rolls two dice, moves one ship that many spaces along the sea lanes, and may then "
    "load "
    "or unload one cargo cube at a port. Cargo delivered to a port that demands it scores points equal to "
    "the "
    "number printed beside the port, and the demand marker then moves down one step. Storms are drawn from a "
    "deck at the start of each round and close one sea lane until the end of the round. A ship caught in a "
    "closed lane loses its cargo to the bottom of the sea. The game ends when the cargo supply runs out or a "
    "player reaches forty points, and the player with the most points wins; ties go to the player with the "
    "fuller warehouse.",
    "A simple country loaf needs only flour, water, salt and a sourdough starter. Mix five hundred grams of "
    "bread flour with three hundred and fifty grams of water and leave it to rest for an hour, so that the "
    "flour "
    "absorbs the water and the gluten begins to form. Then add one hundred grams of active starter and ten "
    "grams of salt and squeeze them through the dough with wet hands. Over the next three hours, fold the "
    "dough "
    "every thirty minutes to build strength. Shape it into a tight round, place it in a floured basket and "
    "leave it in the refrigerator overnight. The next morning bake it in a covered cast-iron pot at two "
    "hundred "
    "and fifty degrees for twenty minutes, then uncover it and bake another twenty-five minutes until the "
    "crust "
    "is deep brown.",
};

struct PromptSpec {
  int passages[3];
  const char* question;
};
const PromptSpec kPrompts[] = {
    {{0, 1, 2}, "In which year was the Harwick lighthouse fully automated?"},
    {{3, 4, 5}, "How long does the sourdough loaf rest in the refrigerator?"},
    {{2, 5, 3}, "Who is the chief executive of Northwind Freight?"},
};

RagPrompt make_prompt(const Model& model, const PromptSpec& spec) {
  const Tokenizer& tok = model.tokenizer();
  RagPrompt p;
  p.system = tok.encode(
      "<|im_start|>system\nYou are a helpful assistant. Answer the question from the documents."
      "<|im_end|>\n<|im_start|>user\n");
  for (const int i : spec.passages) p.chunks.push_back(tok.encode(std::string(kPassages[i]) + "\n\n"));
  p.question = tok.encode(std::string("Question: ") + spec.question + "<|im_end|>\n<|im_start|>assistant\n");
  return p;
}

// The KV of each chunk computed standalone: prefilled after `prefix` (empty: alone at position 0)
// on its own backend, read from the cache.
std::vector<ChunkKv> standalone_kv(const std::shared_ptr<const Model>& model, const RagPrompt& p,
                                   std::span<const TokenId> prefix) {
  std::vector<ChunkKv> out;
  std::vector<float> logits(static_cast<std::size_t>(model->config().vocab));
  for (const auto& chunk : p.chunks) {
    std::vector<TokenId> t(prefix.begin(), prefix.end());
    t.insert(t.end(), chunk.begin(), chunk.end());
    auto backend = backend_for(model, static_cast<std::int64_t>(t.size()));
    backend->forward(prefill(t, 0), logits);
    const auto at = static_cast<std::int32_t>(prefix.size());
    out.push_back(backend->read_chunk_kv(chunk, at, slots_of(at, static_cast<std::int32_t>(chunk.size()))));
  }
  return out;
}

std::unique_ptr<CpuBackend> load_chunks(const std::shared_ptr<const Model>& model, const RagPrompt& p,
                                        const std::vector<ChunkKv>& kvs) {
  auto backend = backend_for(model, static_cast<std::int64_t>(p.tokens().size()));
  for (std::size_t i = 0; i < kvs.size(); ++i) {
    const std::int32_t at = p.chunk_begin(i);
    backend->write_chunk_kv(kvs[i], at, slots_of(at, kvs[i].n_tokens));
  }
  return backend;
}

std::vector<float> full_prefill(const std::shared_ptr<const Model>& model, const RagPrompt& p) {
  const auto t = p.tokens();
  std::vector<float> logits(static_cast<std::size_t>(model->config().vocab));
  backend_for(model, static_cast<std::int64_t>(t.size()))->forward(prefill(t, 0), logits);
  return logits;
}

struct Selective {
  std::vector<float> logits;
  SelectiveRecomputeReport report;
};

// The whole prompt in one selective forward over the loaded chunks; system and question always run.
Selective selective(const std::shared_ptr<const Model>& model, const RagPrompt& p,
                    const std::vector<ChunkKv>& kvs, double ratio, std::int32_t min_tokens) {
  const auto t = p.tokens();
  const auto rows = static_cast<std::int32_t>(t.size());
  Selective out;
  out.logits.resize(static_cast<std::size_t>(model->config().vocab));
  SelectiveRecompute r;
  r.min_tokens = min_tokens;
  r.report = &out.report;
  r.always = {{0, static_cast<std::int32_t>(p.system.size())},
              {rows - static_cast<std::int32_t>(p.question.size()), rows}};
  for (std::size_t i = 0; i < p.chunks.size(); ++i)
    r.chunks.push_back({p.chunk_begin(i), p.chunk_begin(i + 1), ratio});
  ForwardBatch b = prefill(t, 0);
  b.recompute = &r;
  load_chunks(model, p, kvs)->forward(b, out.logits);
  return out;
}

// Full reuse without any recompute: the system prefix prefilled (as the prefix cache would hold it),
// the chunks loaded, and only the question run.
std::vector<float> full_reuse(const std::shared_ptr<const Model>& model, const RagPrompt& p,
                              const std::vector<ChunkKv>& kvs) {
  const auto t = p.tokens();
  std::vector<float> logits(static_cast<std::size_t>(model->config().vocab));
  auto backend = load_chunks(model, p, kvs);
  backend->forward(prefill(p.system, 0), logits);
  ForwardBatch b = prefill(p.question, static_cast<std::int32_t>(t.size() - p.question.size()));
  backend->forward(b, logits);
  return logits;
}

}  // namespace

TEST_CASE("a chunk computed at position 0 and moved to 500 has the layer-0 KV of position 500",
          "[model][reuse]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const Tokenizer& tok = model->tokenizer();
  const std::vector<TokenId> chunk = tok.encode(kPassages[1]);
  const auto n = static_cast<std::int32_t>(chunk.size());
  std::vector<TokenId> filler = tok.encode(std::string(kPassages[0]) + kPassages[2] + kPassages[3]);
  REQUIRE(filler.size() >= 500);
  filler.resize(500);
  std::vector<float> logits(static_cast<std::size_t>(model->config().vocab));

  auto alone = backend_for(model, n);
  alone->forward(prefill(chunk, 0), logits);
  const ChunkKv kv = alone->read_chunk_kv(chunk, 0, slots_of(0, n));
  auto moved_backend = backend_for(model, 500 + n);
  moved_backend->write_chunk_kv(kv, 500, slots_of(500, n));
  const ChunkKv moved = moved_backend->read_chunk_kv(chunk, 500, slots_of(500, n));

  std::vector<TokenId> in_place = filler;
  in_place.insert(in_place.end(), chunk.begin(), chunk.end());
  auto direct_backend = backend_for(model, 500 + n);
  direct_backend->forward(prefill(in_place, 0), logits);
  const ChunkKv direct = direct_backend->read_chunk_kv(chunk, 500, slots_of(500, n));

  // Layer 0's K and V depend on the token only; K also on its position, through RoPE.
  const int dim = model->config().kv_dim();
  double worst = 0;
  for (std::int32_t j = 0; j < n; ++j) {
    double diff = 0, norm = 0;
    for (int i = 0; i < dim; ++i) {
      const double a = moved.k(0)[std::size_t(j * dim + i)], b = direct.k(0)[std::size_t(j * dim + i)];
      diff += (a - b) * (a - b);
      norm += b * b;
    }
    worst = std::max(worst, std::sqrt(diff / norm));
  }
  std::printf("chunk moved 0 -> 500: worst relative L2 error of a layer-0 key %.3g\n", worst);
  CHECK(worst < 1e-4);
  CHECK(std::ranges::equal(moved.v(0), direct.v(0)));
  // Deeper layers saw other context: different.
  CHECK(!std::ranges::equal(moved.v(1), direct.v(1)));
}

TEST_CASE("selective recompute on the real model: ratio 1 is the full prefill, lower ratios approach it",
          "[model][reuse]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  using Clock = std::chrono::steady_clock;
  // CI size: the first two prompts (the third reorders passages they already hold); full size: all.
  const std::span<const PromptSpec> prompts(kPrompts, chunkwise::test::full_size() ? std::size(kPrompts) : 2);
  for (const auto& spec : prompts) {
    const RagPrompt p = make_prompt(*model, spec);
    const auto rows = static_cast<std::int32_t>(p.tokens().size());
    CAPTURE(spec.question, rows);
    const auto t0 = Clock::now();
    const std::vector<float> full = full_prefill(model, p);
    const double full_s = std::chrono::duration<double>(Clock::now() - t0).count();
    auto argmax = [&](const std::vector<float>& l) {
      return std::max_element(l.begin(), l.end()) - l.begin();
    };

    // Chunks computed alone from position 0, and (as CacheBlend does) after the system prompt.
    for (const bool after_system : {false, true}) {
      const std::vector<ChunkKv> kvs = standalone_kv(
          model, p, after_system ? std::span<const TokenId>(p.system) : std::span<const TokenId>());
      const Selective all = selective(model, p, kvs, 1.0, 0);
      CHECK(all.logits == full);  // bit for bit: the same rows through the same ops
      CHECK(all.report.rows.size() == static_cast<std::size_t>(rows));

      const Selective none = selective(model, p, kvs, 0.0, 0);
      const auto t1 = Clock::now();
      const Selective some = selective(model, p, kvs, 0.15, 0);
      const double some_s = std::chrono::duration<double>(Clock::now() - t1).count();
      const Selective some_min = selective(model, p, kvs, 0.15, 256);
      const std::vector<float> reuse = full_reuse(model, p, kvs);
      const double kl_none = kl(full, none.logits), kl_some = kl(full, some.logits),
                   kl_min = kl(full, some_min.logits), kl_reuse = kl(full, reuse);
      std::printf(
          "%-60s chunks %-12s rows %4d | KL vs full: no recompute %.4g, ratio 0 %.4g, ratio 0.15 %.4g "
          "(%zu rows), 0.15+min256 %.4g (%zu rows), 1.0 %.4g | chunk deviation %.3g %.3g %.3g | "
          "top-1 full/0/0.15: %td/%td/%td | time full %.2fs, 0.15 %.2fs (incl. load)\n",
          spec.question, after_system ? "after-system" : "alone", rows, kl_reuse, kl_none, kl_some,
          some.report.rows.size(), kl_min, some_min.report.rows.size(), kl(full, all.logits),
          some.report.chunk_deviation[0], some.report.chunk_deviation[1], some.report.chunk_deviation[2],
          argmax(full), argmax(none.logits), argmax(some.logits), full_s, some_s);
      CHECK(kl_none > 0);
      CHECK(none.logits != full);
      CHECK(none.report.rows.size() == p.system.size() + p.question.size());
      // 0.15 of each chunk, rounded up, plus the always rows; min_tokens raises it to at least 256.
      std::size_t want = p.system.size() + p.question.size();
      for (const auto& c : p.chunks) want += static_cast<std::size_t>(recompute_share(0.15, int(c.size())));
      CHECK(some.report.rows.size() == want);
      CHECK(some_min.report.rows.size() >= p.system.size() + p.question.size() + 256);
      CHECK(kl_some < kl_none);
    }
  }
}
