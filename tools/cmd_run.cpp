#include <cstdio>

#include "chunkwise/policy/sparse/any_sparse_attention.hpp"
#include "chunkwise/sched/inference_session.hpp"
#include "commands.hpp"

namespace chunkwise::cli {

int cmd_run(const std::vector<std::string>& argv) {
  std::set<std::string> options = kCommonOptions;
  options.insert({"prompt", "max-tokens", "temperature", "top-k", "top-p", "seed", "sparse"});
  const Args args(argv, options, {"chat"});
  Request r;
  r.prompt_text = args.required("prompt");
  r.chat = args.flag("chat");
  r.max_new_tokens = static_cast<int>(args.integer("max-tokens", 128));
  r.sampling.temperature = static_cast<float>(args.number("temperature", 0.0));
  r.sampling.top_k = static_cast<int>(args.integer("top-k", 0));
  r.sampling.top_p = static_cast<float>(args.number("top-p", 1.0));
  const long long seed = args.integer("seed", 0);
  check(seed >= 0, ErrorCode::kInvalidArgument, "--seed must be >= 0");
  r.sampling.seed = static_cast<std::uint64_t>(seed);

  AnySparseAttention sparse = make_sparse_policy(args.str("sparse", "dense"));
  auto model = load_model_from_args(args);
  InferenceSession<StallFreeBatching, LruEviction, AnySparseAttention, PrefixOnlyReuse, AnyBackend> session(
      model, session_config_from_args(args), StallFreeBatching{}, LruEviction{}, std::move(sparse));
  session.submit(std::move(r));
  while (session.has_work()) session.step();
  for (const FinishedRequest& f : session.take_finished()) {
    std::printf("%s\n", f.output_text.c_str());
    std::fprintf(stderr, "[%zu prompt tokens, %zu generated, finish: %s, ttft %.3f s, total %.3f s]\n",
                 f.prompt_tokens.size(), f.output_tokens.size(), to_string(f.reason), f.timings.ttft(),
                 f.timings.finished_s - f.timings.submitted_s);
  }
  if (const SparseStats& st = session.metrics().sparse; st.selections > 0)
    std::fprintf(stderr, "[sparse: density %.3f over %lld masks (%lld dense), mask building %.3f s]\n",
                 st.density(), static_cast<long long>(st.selections),
                 static_cast<long long>(st.dense_fallbacks), st.select_s);
  return 0;
}

}  // namespace chunkwise::cli
