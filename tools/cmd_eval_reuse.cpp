// `chunkwise eval-reuse`: quality and speed of the chunk-reuse policies on RAG prompts built from a
// corpus shipped with the project (bench/reuse/corpus.jsonl: fictional passages, two questions
// each, answers stated verbatim). A prompt is a system prefix, k retrieved chunks of N tokens (one
// holds the answer: its passage, padded to N tokens with unrelated text) and the question. For each
// (k, N) and policy it reports, against a full prefill of the same prompts:
//   - answer accuracy on the questions the full prefill answers (greedy answer contains the answer),
//   - top-1 agreement and KL of the next-token distributions over the full prefill's answer
//     (teacher-forced through reuse_logits(), the reference being the same call without reuse),
//   - the share of loaded chunk tokens recomputed,
//   - time to first token with the store warm (median), and its speed-up over the full prefill.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "chunkwise/core/logits_agreement.hpp"
#include "chunkwise/sched/reuse_logits.hpp"
#include "commands.hpp"
#include "lists.hpp"

namespace chunkwise::cli {

namespace {

using nlohmann::json;

struct Question {
  std::string question;
  std::string answer;
  int passage = 0;
};

struct Corpus {
  std::vector<std::string> passages;  // "Passage: title\ntext\n\n"
  std::vector<Question> questions;
};

Corpus read_corpus(const std::string& path) {
  std::ifstream in(path);
  check(static_cast<bool>(in), ErrorCode::kIo, "cannot read corpus '" + path + "' (--corpus)");
  Corpus c;
  int line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw Error(ErrorCode::kInvalidArgument, where + ": not valid JSON (" + e.what() + ")");
    }
    check(j.is_object() && j.contains("title") && j["title"].is_string() && j.contains("text") &&
              j["text"].is_string() && j.contains("questions") && j["questions"].is_array(),
          ErrorCode::kInvalidArgument, where + ": needs 'title', 'text' and 'questions'");
    const int index = static_cast<int>(c.passages.size());
    c.passages.push_back("Passage: " + j["title"].get<std::string>() + "\n" + j["text"].get<std::string>() +
                         "\n\n");
    for (const json& q : j["questions"]) {
      check(q.is_object() && q.contains("question") && q["question"].is_string() && q.contains("answer") &&
                q["answer"].is_string(),
            ErrorCode::kInvalidArgument, where + ": a question needs 'question' and 'answer'");
      c.questions.push_back({q["question"].get<std::string>(), q["answer"].get<std::string>(), index});
    }
  }
  check(c.passages.size() >= 2, ErrorCode::kInvalidArgument, path + ": needs at least two passages");
  return c;
}

// Lower case, letters and digits only, single spaces: "Odile Brannock." and "odile brannock" match.
std::string normalize(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    const auto u = static_cast<unsigned char>(ch);
    if (std::isalnum(u) != 0) {
      out.push_back(static_cast<char>(std::tolower(u)));
    } else if (!out.empty() && out.back() != ' ') {
      out.push_back(' ');
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

bool answers(const std::string& output, const std::string& answer) {
  return (" " + normalize(output) + " ").find(" " + normalize(answer) + " ") != std::string::npos;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 == 1 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

struct Prompt {
  const Question* q = nullptr;
  Request request;      // in segments
  PromptLayout layout;  // the same tokens
};

struct Run {
  std::vector<std::string> outputs;
  std::vector<double> ttft;
  ReuseStats reuse;
  double prefill_s = 0;  // forward time of the prefill steps, all prompts
};

// Each prompt alone (time to first token is one prefill, not a queue), greedy.
Run run_prompts(Engine& engine, const std::vector<Prompt>& prompts, int max_tokens) {
  Run run;
  const ReuseStats before = engine.metrics().reuse;
  const double prefill_before = engine.metrics().prefill_s;
  for (const Prompt& p : prompts) {
    Request r = p.request;
    r.max_new_tokens = max_tokens;
    engine.submit(std::move(r));
    while (engine.has_work()) engine.step();
    for (const FinishedRequest& f : engine.take_finished()) {
      run.outputs.push_back(f.output_text);
      run.ttft.push_back(f.timings.ttft());
    }
  }
  const ReuseStats& after = engine.metrics().reuse;
  run.reuse.chunks_loaded = after.chunks_loaded - before.chunks_loaded;
  run.reuse.chunks_missed = after.chunks_missed - before.chunks_missed;
  run.reuse.chunks_computed = after.chunks_computed - before.chunks_computed;
  run.reuse.device_hits = after.device_hits - before.device_hits;
  run.reuse.tokens_loaded = after.tokens_loaded - before.tokens_loaded;
  run.reuse.tokens_recomputed = after.tokens_recomputed - before.tokens_recomputed;
  run.reuse.load_s = after.load_s - before.load_s;
  run.prefill_s = engine.metrics().prefill_s - prefill_before;
  return run;
}

}  // namespace

int cmd_eval_reuse(const std::vector<std::string>& argv) {
  std::set<std::string> options = kCommonOptions;
  options.insert({"corpus", "filler", "chunks", "chunk-tokens", "questions", "policies", "recompute-ratio",
                  "max-tokens", "seed", "out-json", "chunk-device-mb", "chunk-pinned-mb", "load-control"});
  const Args args(argv, options, {"no-quality"});
  const std::vector<int> chunk_counts = int_list(args.str("chunks", "4,8,16"), "chunks");
  const std::vector<int> chunk_sizes = int_list(args.str("chunk-tokens", "256,512"), "chunk-tokens");
  const std::vector<std::string> policies = split(args.str("policies", "full,blend,adaptive-blend"), ',');
  check(!policies.empty(), ErrorCode::kInvalidArgument, "--policies is empty");
  const std::optional<double> ratio =
      args.get("recompute-ratio") ? std::optional(args.number("recompute-ratio", 0.15)) : std::nullopt;
  for (const std::string& p : policies) {
    check(p != "prefix", ErrorCode::kInvalidArgument, "--policies: prefix is the baseline, always measured");
    (void)make_reuse_policy(p, p == "full" ? std::nullopt : ratio);  // bad names fail before the model loads
  }
  const long long n_questions = args.integer("questions", 20);
  const long long max_tokens = args.integer("max-tokens", 32);
  const long long device_mb = args.integer("chunk-device-mb", 4096);
  const long long pinned_mb = args.integer("chunk-pinned-mb", 0);
  check(n_questions >= 1 && max_tokens >= 1, ErrorCode::kInvalidArgument,
        "--questions and --max-tokens must be >= 1");
  for (const long long mb : {device_mb, pinned_mb})
    check(mb >= 0 && mb <= (1LL << 24), ErrorCode::kInvalidArgument,
          "--chunk-device-mb and --chunk-pinned-mb must be in [0, 16777216]");
  const std::string load_control = args.str("load-control", "off");
  check(load_control == "on" || load_control == "off", ErrorCode::kInvalidArgument,
        "--load-control must be on or off");
  const Corpus corpus = read_corpus(args.str("corpus", "bench/reuse/corpus.jsonl"));
  const std::string filler_path = args.str("filler", "bench/sparse/haystack.txt");
  std::ifstream fin(filler_path);
  check(static_cast<bool>(fin), ErrorCode::kIo, "cannot read filler text '" + filler_path + "' (--filler)");
  const std::string filler_text((std::istreambuf_iterator<char>(fin)), std::istreambuf_iterator<char>());

  auto model = load_model_from_args(args);
  // A model without a tokenizer (make-model's random weights, for speed at a large shape): the same
  // prompts with ids drawn from the text, about one per 4 bytes; time to first token only.
  const bool timing_only = !model->has_tokenizer();
  if (timing_only)
    std::fprintf(stderr, "[eval-reuse] the model has no tokenizer: timing only, random token ids\n");
  const bool quality = !timing_only && !args.flag("no-quality");
  auto encode = [&](const std::string& text) {
    if (timing_only) {
      std::mt19937 ids(static_cast<unsigned>(std::hash<std::string>{}(text)));
      std::uniform_int_distribution<TokenId> id(0, model->config().vocab - 1);
      std::vector<TokenId> t(std::max<std::size_t>(1, text.size() / 4));
      for (TokenId& x : t) x = id(ids);
      return t;
    }
    const Tokenizer& tok = model->tokenizer();
    std::vector<TokenId> t = tok.encode(text);
    if (!t.empty() && tok.bos() >= 0 && t.front() == tok.bos()) t.erase(t.begin());
    return t;
  };
  const std::vector<TokenId> filler = encode(filler_text);
  std::vector<std::vector<TokenId>> passage_tokens;
  for (const std::string& p : corpus.passages) passage_tokens.push_back(encode(p));
  const std::vector<TokenId> prefix = encode(
      "<|im_start|>system\nYou are a helpful assistant. Answer the question with a short phrase taken from "
      "the "
      "passages.<|im_end|>\n<|im_start|>user\n");

  const SessionConfig base = session_config_from_args(args);
  const BackendProvider* provider = base.backend.get();
  const std::string device = provider != nullptr ? provider->name() : "cpu";
  auto engine_config = [&](const std::string& reuse) {
    EngineConfig ec;
    ec.session = base;
    ec.session.prefix_caching = false;  // every prompt prefills in full: the comparison is per prompt
    ec.session.max_batch_tokens = model->config().max_context;
    ec.session.chunk_device_mb = static_cast<std::size_t>(device_mb);
    ec.session.chunk_pinned_mb = static_cast<std::size_t>(pinned_mb);
    ec.session.reuse_load_control = load_control == "on";
    ec.batching = "prefill-first";
    ec.reuse = reuse;
    if (reuse != "prefix" && reuse != "full") ec.recompute_ratio = ratio.value_or(-1);
    return ec;
  };

  json report = json::array();
  std::mt19937 rng(static_cast<unsigned>(args.integer("seed", 1)));
  for (const int size : chunk_sizes) {
    // The chunk of every passage at this size: the passage, then unrelated text up to `size` tokens.
    std::vector<std::vector<TokenId>> chunks;
    for (std::size_t i = 0; i < passage_tokens.size(); ++i) {
      const std::vector<TokenId>& p = passage_tokens[i];
      check(static_cast<int>(p.size()) <= size && filler.size() > static_cast<std::size_t>(size),
            ErrorCode::kInvalidArgument,
            "--chunk-tokens " + std::to_string(size) + " is shorter than passage " + std::to_string(i) +
                " (" + std::to_string(p.size()) + " tokens) or the filler text");
      std::vector<TokenId> c = p;
      const std::size_t at = (i * 997) % (filler.size() - static_cast<std::size_t>(size));
      c.insert(c.end(), filler.begin() + static_cast<std::ptrdiff_t>(at),
               filler.begin() + static_cast<std::ptrdiff_t>(at + static_cast<std::size_t>(size) - p.size()));
      chunks.push_back(std::move(c));
    }
    for (const int k : chunk_counts) {
      check(k <= static_cast<int>(chunks.size()), ErrorCode::kInvalidArgument,
            "--chunks " + std::to_string(k) + ": the corpus has " + std::to_string(chunks.size()) +
                " passages");
      if (static_cast<long long>(prefix.size()) + static_cast<long long>(k) * size + 64 + max_tokens >
          model->config().max_context) {
        std::fprintf(stderr, "[eval-reuse] %d x %d tokens: past the model's context, skipped\n", k, size);
        continue;
      }
      std::vector<Prompt> prompts;
      std::vector<std::size_t> order(corpus.questions.size());
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::shuffle(order.begin(), order.end(), rng);
      order.resize(std::min<std::size_t>(order.size(), static_cast<std::size_t>(n_questions)));
      for (const std::size_t qi : order) {
        const Question& q = corpus.questions[qi];
        std::vector<int> picked = {q.passage};
        std::uniform_int_distribution<int> any(0, static_cast<int>(chunks.size()) - 1);
        while (static_cast<int>(picked.size()) < k) {
          const int c = any(rng);
          if (std::find(picked.begin(), picked.end(), c) == picked.end()) picked.push_back(c);
        }
        std::shuffle(picked.begin(), picked.end(), rng);  // the answer's chunk anywhere
        Prompt p;
        p.q = &q;
        p.request.label = std::to_string(qi);
        p.request.stop_at_eos = true;
        auto add = [&](SegmentKind kind, std::vector<TokenId> tokens) {
          p.layout.append(kind, tokens);
          p.request.segments.push_back({kind, {}, std::move(tokens)});
        };
        add(SegmentKind::kPrefix, prefix);
        for (const int c : picked) add(SegmentKind::kChunk, chunks[static_cast<std::size_t>(c)]);
        add(SegmentKind::kQuestion,
            encode("Question: " + q.question + "<|im_end|>\n<|im_start|>assistant\n"));
        prompts.push_back(std::move(p));
      }
      std::fprintf(stderr, "[eval-reuse] %d chunks x %d tokens, %zu prompts: full prefill\n", k, size,
                   prompts.size());
      Engine full(model, engine_config("prefix"));
      const int new_tokens = timing_only ? 1 : static_cast<int>(max_tokens);
      const Run reference = run_prompts(full, prompts, new_tokens);
      std::vector<bool> full_right;
      std::vector<std::vector<TokenId>> full_answer;
      for (std::size_t i = 0; i < prompts.size(); ++i) {
        full_right.push_back(answers(reference.outputs[i], prompts[i].q->answer));
        full_answer.push_back(encode(reference.outputs[i]));
      }
      const auto n_right = std::count(full_right.begin(), full_right.end(), true);
      // One backend for every teacher-forced prompt of this size (made once: uploading the weights
      // per prompt would dominate on a GPU).
      std::optional<AnyBackend> scorer;
      std::vector<std::vector<float>> full_logits;
      if (quality) {
        const int blocks = (model->config().max_context + base.block_size - 1) / base.block_size;
        scorer.emplace(BackendMaker<AnyBackend>::make(provider, model, blocks, base.block_size));
        AnyReusePolicy none = make_reuse_policy("prefix");
        ChunkStore empty(ChunkStore::Config{});
        for (std::size_t i = 0; i < prompts.size(); ++i)
          full_logits.push_back(
              reuse_logits(*scorer, model->config(), prompts[i].layout, none, empty, full_answer[i]).logits);
      }
      const double full_ttft = median(reference.ttft);
      report.push_back({{"chunks", k},
                        {"chunk_tokens", size},
                        {"policy", "full-prefill"},
                        {"device", device},
                        {"prompts", prompts.size()},
                        {"accuracy", static_cast<double>(n_right) / static_cast<double>(prompts.size())},
                        {"ttft_s", full_ttft},
                        {"prefill_forward_s", reference.prefill_s / static_cast<double>(prompts.size())}});

      auto store = std::make_shared<ChunkStore>([&] {
        ChunkStore::Config sc;
        sc.model_id = model_fingerprint(*model);
        sc.host_capacity_bytes = std::size_t{16} << 30;
        return sc;
      }());
      for (std::size_t pi = 0; pi < policies.size(); ++pi) {
        const std::string& policy = policies[pi];
        std::fprintf(stderr, "[eval-reuse] %d chunks x %d tokens: %s\n", k, size, policy.c_str());
        EngineConfig ec = engine_config(policy);
        ec.session.chunk_store = store;
        Engine engine(model, ec);
        // Warm: the first pass stores every chunk (and keeps it in the device tier, on a GPU).
        if (pi == 0 || provider != nullptr) (void)run_prompts(engine, prompts, 1);
        const Run run = run_prompts(engine, prompts, new_tokens);
        long long kept = 0, right = 0;
        for (std::size_t i = 0; i < prompts.size(); ++i) {
          const bool ok = answers(run.outputs[i], prompts[i].q->answer);
          right += ok ? 1 : 0;
          kept += ok && full_right[i] ? 1 : 0;
        }
        json row{{"chunks", k},
                 {"chunk_tokens", size},
                 {"policy", policy},
                 {"device", device},
                 {"prompts", prompts.size()},
                 {"accuracy", static_cast<double>(right) / static_cast<double>(prompts.size())},
                 {"accuracy_vs_full",
                  n_right > 0 ? static_cast<double>(kept) / static_cast<double>(n_right) : 0.0},
                 {"recompute_ratio", run.reuse.tokens_loaded > 0
                                         ? static_cast<double>(run.reuse.tokens_recomputed) /
                                               static_cast<double>(run.reuse.tokens_loaded)
                                         : 0.0},
                 {"chunks_loaded", run.reuse.chunks_loaded},
                 {"chunks_missed", run.reuse.chunks_missed},
                 {"chunks_computed", run.reuse.chunks_computed},
                 {"device_hits", run.reuse.device_hits},
                 {"ttft_s", median(run.ttft)},
                 {"prefill_forward_s", run.prefill_s / static_cast<double>(prompts.size())},
                 {"load_s", run.reuse.load_s / static_cast<double>(prompts.size())},
                 {"speedup", median(run.ttft) > 0 ? full_ttft / median(run.ttft) : 0.0}};
        if (quality) {
          AnyReusePolicy planner = make_reuse_policy(policy, policy == "full" ? std::nullopt : ratio);
          double top1 = 0, kl = 0, rows = 0;
          for (std::size_t i = 0; i < prompts.size(); ++i) {
            const ReuseLogits got =
                reuse_logits(*scorer, model->config(), prompts[i].layout, planner, *store, full_answer[i]);
            const LogitsAgreement a = compare_logits(full_logits[i], got.logits, model->config().vocab);
            const double n = static_cast<double>(full_answer[i].size() + 1);
            top1 += a.top1 * n, kl += a.mean_kl * n, rows += n;
          }
          row["top1"] = top1 / rows;
          row["mean_kl"] = kl / rows;
        }
        report.push_back(row);
      }
    }
  }

  if (timing_only)
    for (json& row : report) row.erase("accuracy"), row.erase("accuracy_vs_full"), row["timing_only"] = true;
  if (const auto path = args.get("out-json")) {
    std::ofstream out(*path);
    check(static_cast<bool>(out), ErrorCode::kIo, "cannot write '" + *path + "'");
    out << report.dump(2) << '\n';
  }
  std::printf("%-6s %-6s %-15s %8s %9s %7s %8s %9s %9s %8s\n", "chunks", "tokens", "policy", "accuracy",
              "vs full", "top-1", "KL", "recompute", "TTFT ms", "speed-up");
  for (const json& row : report) {
    auto num = [&](const char* key) { return row.contains(key) ? row[key].get<double>() : -1.0; };
    std::printf("%-6d %-6d %-15s %8.3f %9.3f %7.3f %8.4f %9.3f %9.2f %8.2f\n", row["chunks"].get<int>(),
                row["chunk_tokens"].get<int>(), row["policy"].get<std::string>().c_str(), num("accuracy"),
                num("accuracy_vs_full"), num("top1"), num("mean_kl"), num("recompute_ratio"),
                1e3 * num("ttft_s"), num("speedup"));
  }
  return 0;
}

}  // namespace chunkwise::cli
