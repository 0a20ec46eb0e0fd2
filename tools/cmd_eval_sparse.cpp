// chunkwise eval-sparse: what each sparse-attention policy costs and what it loses, on the real
// model. Retrieval (passkey and needle-in-a-haystack prompts at several lengths and depths,
// answered by greedy decoding), fidelity (top-1 agreement and KL of next-token distributions
// against dense on natural text), attention recall per layer (the share of exact softmax mass each
// mask keeps), density (tiles computed / causal tiles) and prefill time.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <sstream>

#include "chunkwise/backend/prompt_logits.hpp"
#include "chunkwise/core/logits_agreement.hpp"
#include "chunkwise/policy/sparse/any_sparse_attention.hpp"
#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"
#include "chunkwise/sched/engine.hpp"
#include "commands.hpp"
#include "lists.hpp"

namespace chunkwise::cli {

namespace {

using nlohmann::json;

constexpr int kAnswerTokens = 8;  // greedy tokens a retrieval prompt may answer in

std::vector<double> depth_list(const std::string& s) {
  std::vector<double> out;
  for (const std::string& item : split(s, ',')) {
    std::size_t used = 0;
    double v = -1;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    check(used == item.size() && v >= 0 && v <= 1, ErrorCode::kInvalidArgument,
          "--depths takes numbers in [0, 1] separated by commas, got '" + s + "'");
    out.push_back(v);
  }
  check(!out.empty(), ErrorCode::kInvalidArgument, "--depths is empty");
  return out;
}

// A retrieval prompt of exactly `length` tokens: instruction, filler with the needle at `depth`,
// question. The answer is a number that appears nowhere else.
struct RetrievalPrompt {
  std::string task;
  int length = 0;
  double depth = 0;
  std::string answer;
  std::vector<TokenId> ids;
};

std::vector<TokenId> concat(std::initializer_list<const std::vector<TokenId>*> parts) {
  std::vector<TokenId> out;
  for (const auto* p : parts) out.insert(out.end(), p->begin(), p->end());
  return out;
}

RetrievalPrompt make_prompt(const Tokenizer& tok, const std::string& task, const std::vector<TokenId>& filler,
                            int length, double depth, const std::string& answer) {
  const bool passkey = task == "passkey";
  const std::vector<TokenId> head = tok.encode(
      passkey
          ? "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I "
            "will quiz you about the important information there.\n"
          : "Below is a long document. A special magic number is hidden in it; remember it.\n");
  const std::vector<TokenId> needle =
      tok.encode(passkey ? "\nThe pass key is " + answer + ". Remember it. " + answer + " is the pass key.\n"
                         : "\nThe special magic number is " + answer + ".\n");
  const std::vector<TokenId> question = tok.encode(
      passkey ? "\nWhat is the pass key? The pass key is"
              : "\nWhat is the special magic number mentioned in the document? The special magic number is");
  const int body = length - static_cast<int>(head.size() + needle.size() + question.size());
  check(body > 0 && body <= static_cast<int>(filler.size()), ErrorCode::kInvalidArgument,
        "retrieval prompt of " + std::to_string(length) + " tokens: the filler text is too short");
  const auto at = static_cast<std::ptrdiff_t>(depth * body);
  const std::vector<TokenId> before(filler.begin(), filler.begin() + at);
  const std::vector<TokenId> after(filler.begin() + at, filler.begin() + body);
  return {task, length, depth, answer, concat({&head, &before, &needle, &after, &question})};
}

// A policy's selector that also measures attention recall per layer on a sample of each chunk's rows.
class RecallSelector final : public SparseSelector {
 public:
  explicit RecallSelector(AnySparseAttention policy) : inner_(std::move(policy)) {}
  [[nodiscard]] int tile() const override { return inner_.tile(); }
  [[nodiscard]] int min_kv_len() const override { return std::min(inner_.min_kv_len(), 1); }
  BlockMask select(const AttentionProbe& probe) override {
    // Probed at every length so that short chunks count as recall 1, which they are.
    BlockMask mask = probe.kv_len >= inner_.min_kv_len() ? inner_.select(probe) : dense_mask(probe, tile());
    constexpr int kRows = 16;
    std::vector<int> rows;
    for (int i = 0; i < kRows; ++i)
      rows.push_back(probe.query_len - 1 - i * (probe.query_len - 1) / (kRows - 1));
    double sum = 0;
    for (int h = 0; h < probe.n_heads; ++h) sum += detail::attention_recall(probe, mask, h, rows);
    if (static_cast<int>(per_layer_.size()) <= probe.layer)
      per_layer_.resize(static_cast<std::size_t>(probe.layer) + 1);
    per_layer_[static_cast<std::size_t>(probe.layer)].push_back(sum / probe.n_heads);
    return mask;
  }
  [[nodiscard]] std::vector<double> recall_per_layer() const {
    std::vector<double> out;
    for (const auto& v : per_layer_)
      out.push_back(v.empty() ? 1.0 : std::accumulate(v.begin(), v.end(), 0.0) / v.size());
    return out;
  }
  [[nodiscard]] const SparseStats& stats() const { return inner_.stats(); }

 private:
  PolicySelector<AnySparseAttention> inner_;
  std::vector<std::vector<double>> per_layer_;
};

}  // namespace

int cmd_eval_sparse(const std::vector<std::string>& argv) {
  std::set<std::string> options = kCommonOptions;
  options.insert({"policies", "lengths", "depths", "samples", "tasks", "haystack", "fidelity-rows", "repeat",
                  "out-json", "prefill-chunk", "seed"});
  const Args args(argv, options, {"no-retrieval", "no-fidelity", "no-timing"});
  const std::vector<std::string> specs =
      split(args.str("policies", "dense;streaming;vertical-slash;block-topk;flex-prefill"), ';');
  check(!specs.empty(), ErrorCode::kInvalidArgument, "--policies is empty");
  for (const std::string& spec : specs)
    (void)make_sparse_policy(spec);  // bad specs fail before the model loads
  const std::vector<int> lengths = int_list(args.str("lengths", "2048,4096,8184"), "lengths");
  const std::vector<double> depths = depth_list(args.str("depths", "0.1,0.3,0.5,0.7,0.9"));
  const std::vector<std::string> tasks = split(args.str("tasks", "passkey,needle"), ',');
  for (const std::string& t : tasks)
    check(t == "passkey" || t == "needle", ErrorCode::kInvalidArgument,
          "--tasks: passkey, needle; got '" + t + "'");
  const long long samples = args.integer("samples", 2);
  const long long fidelity_rows = args.integer("fidelity-rows", 256);
  const long long repeat = args.integer("repeat", 2);
  const long long chunk = args.integer("prefill-chunk", 0);
  check(samples >= 1 && fidelity_rows >= 1 && repeat >= 1 && chunk >= 0, ErrorCode::kInvalidArgument,
        "--samples, --fidelity-rows and --repeat must be >= 1, --prefill-chunk >= 0");
  const std::string haystack_path = args.str("haystack", "bench/sparse/haystack.txt");
  std::ifstream hin(haystack_path);
  check(static_cast<bool>(hin), ErrorCode::kIo,
        "cannot read haystack text '" + haystack_path + "' (--haystack)");
  const std::string haystack((std::istreambuf_iterator<char>(hin)), std::istreambuf_iterator<char>());

  auto model = load_model_from_args(args);
  const int max_len = *std::max_element(lengths.begin(), lengths.end());
  check(max_len + kAnswerTokens <= model->config().max_context, ErrorCode::kContextOverflow,
        "--lengths: " + std::to_string(max_len) + " tokens (+" + std::to_string(kAnswerTokens) +
            " generated) exceed the model's context of " + std::to_string(model->config().max_context));
  // Retrieval and fidelity need a tokenizer and that much natural text; timing alone (a
  // random-weight model at long context) repeats the text, or draws random ids for a model without a
  // tokenizer, since speed does not depend on the tokens.
  const bool needs_text = !args.flag("no-retrieval") || !args.flag("no-fidelity");
  check(!needs_text || model->has_tokenizer(), ErrorCode::kInvalidArgument,
        "this model has no tokenizer: only --no-retrieval --no-fidelity (timing) can run");
  std::vector<TokenId> natural, passkey_filler, timing_text;
  if (model->has_tokenizer()) {
    const Tokenizer& tok = model->tokenizer();
    natural = tok.encode(haystack);
    const std::vector<TokenId> sentence = tok.encode(
        " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.");
    while (static_cast<int>(passkey_filler.size()) < max_len)
      passkey_filler.insert(passkey_filler.end(), sentence.begin(), sentence.end());
    check(!needs_text || static_cast<int>(natural.size()) >= max_len, ErrorCode::kInvalidArgument,
          "the haystack text has " + std::to_string(natural.size()) +
              " tokens, fewer than --lengths needs (--no-retrieval --no-fidelity times repeated text)");
    while (static_cast<int>(timing_text.size()) < max_len)
      timing_text.insert(timing_text.end(), natural.begin(), natural.end());
  } else {
    std::mt19937 ids(1);
    std::uniform_int_distribution<TokenId> id(0, model->config().vocab - 1);
    for (int i = 0; i < max_len; ++i) timing_text.push_back(id(ids));
  }

  std::vector<RetrievalPrompt> prompts;
  std::mt19937 rng(static_cast<unsigned>(args.integer("seed", 7)));
  std::uniform_int_distribution<int> number(10000, 99999);
  for (const std::string& task : args.flag("no-retrieval") ? std::vector<std::string>{} : tasks)
    for (const int len : lengths)
      for (const double depth : depths)
        for (long long s = 0; s < samples; ++s)
          prompts.push_back(make_prompt(model->tokenizer(), task,
                                        task == "passkey" ? passkey_filler : natural, len, depth,
                                        std::to_string(number(rng))));

  const SessionConfig base = session_config_from_args(args);
  const auto engine_for = [&](const std::string& spec, int max_tokens) {
    EngineConfig ec;
    ec.session = base;
    ec.session.prefix_caching = false;  // every prompt's prefill is its own, masks included
    ec.session.max_batch_tokens = max_tokens;
    ec.sparse = spec;
    if (chunk > 0) {
      ec.batching = "stall-free";
      ec.token_budget = static_cast<int>(chunk);
    } else {
      ec.batching = "prefill-first";
    }
    return Engine(model, ec);
  };

  json report = json::array();
  std::map<int, std::vector<float>> dense_logits;  // per length
  std::map<std::size_t, bool> dense_correct;       // per prompt
  for (const std::string& spec : specs) {
    std::fprintf(stderr, "[eval-sparse] %s\n", spec.c_str());
    // Retrieval: every prompt through the engine, greedy, 8 new tokens.
    std::map<std::string, std::pair<int, int>> solved;  // "task/len" -> (correct, total)
    std::map<int, std::pair<int, int>> kept;            // len -> (correct on dense-solved, dense-solved)
    std::map<int, SparseStats> retrieval_stats;         // len -> the masks of its prompts
    std::map<int, json> answers;                        // len -> every prompt's outcome
    for (const int len : args.flag("no-retrieval") ? std::vector<int>{} : lengths) {
      Engine engine = engine_for(spec, len);
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        if (prompts[i].length != len) continue;
        Request r;
        r.label = std::to_string(i);
        r.prompt_tokens = prompts[i].ids;
        r.max_new_tokens = kAnswerTokens;
        engine.submit(std::move(r));
      }
      while (engine.has_work()) engine.step();
      for (const FinishedRequest& f : engine.take_finished()) {
        const std::size_t i = std::stoul(f.label);
        const RetrievalPrompt& p = prompts[i];
        const bool ok = f.output_text.find(p.answer) != std::string::npos;
        answers[len].push_back({{"task", p.task},
                                {"depth", p.depth},
                                {"answer", p.answer},
                                {"ok", ok},
                                {"output", f.output_text}});
        auto& [c, n] = solved[p.task + "/" + std::to_string(p.length)];
        c += ok;
        n += 1;
        if (spec == specs.front() && spec.rfind("dense", 0) == 0) dense_correct[i] = ok;
        if (dense_correct.count(i) && dense_correct[i]) {
          kept[p.length].first += ok;
          kept[p.length].second += 1;
        }
      }
      retrieval_stats[len] = engine.metrics().sparse;
    }
    for (const int len : lengths) {
      json row{{"policy", spec}, {"length", len}, {"device", base.backend ? base.backend->name() : "cpu"}};
      for (const std::string& task : tasks) {
        const auto it = solved.find(task + "/" + std::to_string(len));
        if (it != solved.end())
          row[task + "_accuracy"] = static_cast<double>(it->second.first) / it->second.second;
      }
      if (kept.count(len) && kept[len].second > 0)
        row["retained_vs_dense"] = static_cast<double>(kept[len].first) / kept[len].second;
      if (retrieval_stats[len].selections > 0) row["retrieval_density"] = retrieval_stats[len].density();
      if (answers.count(len)) row["answers"] = answers[len];
      const std::vector<TokenId> ids(timing_text.begin(), timing_text.begin() + len);
      if (!args.flag("no-fidelity")) {
        // Fidelity and recall on natural text: the last fidelity_rows positions' distributions.
        const int first = std::max(0, len - static_cast<int>(fidelity_rows));
        RecallSelector recall(make_sparse_policy(spec));
        const std::vector<float> logits = prompt_logits(model, ids, base.block_size, base.backend.get(),
                                                        &recall, static_cast<int>(chunk), first);
        if (spec.rfind("dense", 0) == 0 && !dense_logits.count(len)) dense_logits[len] = logits;
        if (dense_logits.count(len)) {
          const LogitsAgreement a = compare_logits(dense_logits[len], logits, model->config().vocab);
          row["top1_agreement"] = a.top1;
          row["kl"] = a.mean_kl;
        }
        const std::vector<double> per_layer = recall.recall_per_layer();
        row["recall_per_layer"] = per_layer;
        row["recall_mean"] =
            per_layer.empty() ? 1.0
                              : std::accumulate(per_layer.begin(), per_layer.end(), 0.0) / per_layer.size();
        row["recall_min"] = per_layer.empty() ? 1.0 : *std::min_element(per_layer.begin(), per_layer.end());
        row["density"] = recall.stats().selections > 0 ? recall.stats().density() : 1.0;
      }
      if (!args.flag("no-timing")) {
        // Time to first token of the natural prompt, best of `repeat` (the first run warms up).
        Engine engine = engine_for(spec, len);
        double best = 1e30, mask_s = 0;
        for (long long k = 0; k < repeat; ++k) {
          Request r;
          r.prompt_tokens = ids;
          r.max_new_tokens = 1;
          const double before = engine.metrics().sparse.select_s;
          engine.submit(std::move(r));
          while (engine.has_work()) engine.step();
          for (const FinishedRequest& f : engine.take_finished()) {
            if (f.timings.ttft() < best) {
              best = f.timings.ttft();
              mask_s = engine.metrics().sparse.select_s - before;
            }
          }
        }
        row["ttft_s"] = best;
        row["mask_s"] = mask_s;
        if (!row.contains("density"))
          row["density"] = engine.metrics().sparse.selections > 0 ? engine.metrics().sparse.density() : 1.0;
      }
      json brief = row;
      brief.erase("answers");
      brief.erase("recall_per_layer");
      std::fprintf(stderr, "%s\n", brief.dump().c_str());
      report.push_back(row);
    }
  }
  // Speed-up against dense at the same length.
  for (json& row : report) {
    for (const json& d : report)
      if (d["length"] == row["length"] && d["policy"].get<std::string>().rfind("dense", 0) == 0 &&
          d.contains("ttft_s") && row.contains("ttft_s"))
        row["speedup_vs_dense"] = d["ttft_s"].get<double>() / row["ttft_s"].get<double>();
  }
  if (const auto path = args.get("out-json")) {
    std::ofstream out(*path);
    check(static_cast<bool>(out), ErrorCode::kIo, "cannot write '" + *path + "'");
    out << report.dump(1) << "\n";
  }
  std::printf("%-44s %6s %8s %8s %8s %8s %8s %9s %8s %8s %8s %7s\n", "policy", "length", "density", "passkey",
              "needle", "retained", "top1", "KL", "recall", "rec.min", "ttft_s", "speedup");
  const auto num = [](const json& row, const char* key) {
    return row.contains(key) ? row[key].get<double>() : NAN;
  };
  for (const json& row : report)
    std::printf("%-44s %6d %8.3f %8.3f %8.3f %8.3f %8.3f %9.2e %8.3f %8.3f %8.3f %7.2f\n",
                row["policy"].get<std::string>().c_str(), row["length"].get<int>(), num(row, "density"),
                num(row, "passkey_accuracy"), num(row, "needle_accuracy"), num(row, "retained_vs_dense"),
                num(row, "top1_agreement"), num(row, "kl"), num(row, "recall_mean"), num(row, "recall_min"),
                num(row, "ttft_s"), num(row, "speedup_vs_dense"));
  return 0;
}

}  // namespace chunkwise::cli
