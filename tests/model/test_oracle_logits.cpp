// The CPU engine against Hugging Face transformers on the same GGUF (tests/oracle/make_golden.py):
// argmax identical at every position, max |dlogit| <= 1e-3 * max |logit| on the stored full rows
// and the top-8 of every position, greedy continuations of 64 tokens identical.
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "chunkwise/backend/prompt_logits.hpp"
#include "chunkwise/sched/inference_session.hpp"
#include "model_fixture.hpp"

namespace {

using nlohmann::json;
const std::filesystem::path kGolden = std::filesystem::path(CHUNKWISE_TEST_DATA) / "golden";

json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  return json::parse(in);
}

std::vector<float> read_f32(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary | std::ios::ate);
  REQUIRE(in.good());
  std::vector<float> v(static_cast<std::size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

int argmax(const float* row, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (row[i] > row[best]) best = i;
  return best;
}

}  // namespace

TEST_CASE("logits equal transformers on the golden prompts", "[oracle]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const json manifest = read_json(kGolden / "manifest.json");
  const int vocab = model->config().vocab;
  bool long_prompt = false;
  REQUIRE(manifest.at("prompts").size() >= 5);
  for (const json& entry : manifest.at("prompts")) {
    const json g = read_json(kGolden / entry.at("json").get<std::string>());
    const std::string name = g.at("name").get<std::string>();
    INFO("prompt " << name);
    const auto tokens = g.at("tokens").get<std::vector<chunkwise::TokenId>>();
    long_prompt = long_prompt || tokens.size() >= 1000;
    const std::vector<float> ours = chunkwise::prompt_logits(model, tokens);
    const double tol = 1e-3 * g.at("max_abs_logit").get<double>();

    const auto ref_argmax = g.at("argmax").get<std::vector<int>>();
    REQUIRE(ref_argmax.size() == tokens.size());
    int mismatches = 0;
    for (std::size_t t = 0; t < tokens.size(); ++t)
      mismatches += argmax(ours.data() + t * static_cast<std::size_t>(vocab), vocab) != ref_argmax[t] ? 1 : 0;
    CHECK(mismatches == 0);

    double worst_top8 = 0;
    const json& top8 = g.at("top8");
    for (std::size_t t = 0; t < tokens.size(); ++t)
      for (const json& pair : top8.at(t)) {
        const auto id = pair.at(0).get<std::size_t>();
        const double ref = pair.at(1).get<double>();
        worst_top8 = std::max(worst_top8, std::abs(ours[t * static_cast<std::size_t>(vocab) + id] - ref));
      }
    CHECK(worst_top8 <= tol);

    const json& full = g.at("full_rows");
    const std::vector<float> rows = read_f32(kGolden / full.at("file").get<std::string>());
    const auto positions = full.at("positions").get<std::vector<std::size_t>>();
    REQUIRE(rows.size() == positions.size() * static_cast<std::size_t>(vocab));
    double worst_full = 0;
    for (std::size_t i = 0; i < positions.size(); ++i)
      for (int v = 0; v < vocab; ++v)
        worst_full = std::max(
            worst_full,
            static_cast<double>(
                std::abs(ours[positions[i] * static_cast<std::size_t>(vocab) + static_cast<std::size_t>(v)] -
                         rows[i * static_cast<std::size_t>(vocab) + static_cast<std::size_t>(v)])));
    CHECK(worst_full <= tol);
    WARN(name << ": " << tokens.size() << " tokens, max|dlogit| full rows " << worst_full << ", top-8 "
              << worst_top8 << ", tolerance " << tol);
  }
  CHECK(long_prompt);
}

TEST_CASE("greedy continuations of 64 tokens equal transformers", "[oracle]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const json manifest = read_json(kGolden / "manifest.json");
  chunkwise::InferenceSession<> session(model);
  std::map<chunkwise::RequestId, std::vector<chunkwise::TokenId>> expected;
  for (const json& entry : manifest.at("prompts")) {
    const json g = read_json(kGolden / entry.at("json").get<std::string>());
    chunkwise::Request r;
    r.label = g.at("name").get<std::string>();
    r.prompt_tokens = g.at("tokens").get<std::vector<chunkwise::TokenId>>();
    r.max_new_tokens = 64;
    r.stop_at_eos = false;  // transformers generated exactly 64 tokens
    expected[session.submit(r)] = g.at("greedy64").get<std::vector<chunkwise::TokenId>>();
  }
  while (session.has_work()) session.step();
  const auto done = session.take_finished();
  REQUIRE(done.size() == expected.size());
  for (const auto& f : done) {
    INFO("prompt " << f.label);
    CHECK(f.output_tokens == expected.at(f.id));
  }
}
