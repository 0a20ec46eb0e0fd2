#include <cstdio>
#include <fstream>
#include <sstream>

#include "commands.hpp"

namespace chunkwise::cli {

namespace {

// --segment KIND:TEXT, where TEXT may be @FILE (the file's contents).
RequestSegment parse_segment(const std::string& spec) {
  const std::size_t colon = spec.find(':');
  const auto kind = segment_kind(std::string_view(spec).substr(0, colon));
  check(colon != std::string::npos && kind.has_value(), ErrorCode::kInvalidArgument,
        "--segment expects KIND:TEXT or KIND:@FILE with KIND prefix, chunk or question, got '" + spec + "'");
  RequestSegment seg;
  seg.kind = *kind;
  seg.text = spec.substr(colon + 1);
  if (seg.text.rfind('@', 0) == 0) {
    const std::string path = seg.text.substr(1);
    std::ifstream in(path, std::ios::binary);
    check(static_cast<bool>(in), ErrorCode::kIo, "--segment: cannot read '" + path + "'");
    std::ostringstream text;
    text << in.rdbuf();
    seg.text = text.str();
  }
  check(!seg.text.empty(), ErrorCode::kInvalidArgument, "--segment '" + spec + "' has no text");
  return seg;
}

}  // namespace

int cmd_run(const std::vector<std::string>& argv) {
  std::set<std::string> options = kCommonOptions;
  options.insert({"prompt", "segment", "max-tokens", "temperature", "top-k", "top-p", "seed", "sparse"});
  options.insert(kReuseOptions.begin(), kReuseOptions.end());
  const Args args(argv, options, {"chat"});
  Request r;
  for (const std::string& spec : args.all("segment")) r.segments.push_back(parse_segment(spec));
  check(r.segments.empty() != !args.get("prompt"), ErrorCode::kInvalidArgument,
        "give either --prompt or --segment (one or more)");
  if (r.segments.empty()) r.prompt_text = args.required("prompt");
  r.chat = args.flag("chat");
  r.max_new_tokens = static_cast<int>(args.integer("max-tokens", 128));
  r.sampling.temperature = static_cast<float>(args.number("temperature", 0.0));
  r.sampling.top_k = static_cast<int>(args.integer("top-k", 0));
  r.sampling.top_p = static_cast<float>(args.number("top-p", 1.0));
  const long long seed = args.integer("seed", 0);
  check(seed >= 0, ErrorCode::kInvalidArgument, "--seed must be >= 0");
  r.sampling.seed = static_cast<std::uint64_t>(seed);

  EngineConfig config;
  config.session = session_config_from_args(args);
  config.batching = "prefill-first";  // one request: its prompt in as few steps as the session allows
  config.sparse = args.str("sparse", "dense");
  reuse_config_from_args(args, config);
  auto model = load_model_from_args(args);
  Engine engine(model, config);
  engine.submit(std::move(r));
  while (engine.has_work()) engine.step();
  for (const FinishedRequest& f : engine.take_finished()) {
    std::printf("%s\n", f.output_text.c_str());
    std::fprintf(stderr, "[%zu prompt tokens, %zu generated, finish: %s, ttft %.3f s, total %.3f s]\n",
                 f.prompt_tokens.size(), f.output_tokens.size(), to_string(f.reason), f.timings.ttft(),
                 f.timings.finished_s - f.timings.submitted_s);
  }
  if (const SparseStats& st = engine.metrics().sparse; st.selections > 0)
    std::fprintf(stderr, "[sparse: density %.3f over %lld masks (%lld dense), mask building %.3f s]\n",
                 st.density(), static_cast<long long>(st.selections),
                 static_cast<long long>(st.dense_fallbacks), st.select_s);
  print_reuse_stats(engine);
  if (engine.chunk_store() != nullptr)
    engine.chunk_store()->flush();  // the next run finds the chunks on disk
  return 0;
}

}  // namespace chunkwise::cli
