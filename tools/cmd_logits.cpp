#include <cstdio>

#include "chunkwise/backend/prompt_logits.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/sparse/any_sparse_attention.hpp"
#include "commands.hpp"
#include "npy.hpp"

namespace chunkwise::cli {

int cmd_logits(const std::vector<std::string>& argv) {
  std::set<std::string> options = kCommonOptions;
  options.insert({"text", "out", "sparse", "chunk"});
  const Args args(argv, options, {"chat"});
  const std::string text = args.required("text");
  const std::string out = args.required("out");
  auto model = load_model_from_args(args);
  const Tokenizer& tok = model->tokenizer();
  std::vector<TokenId> ids;
  if (args.flag("chat")) {
    const ChatMessage msg{"user", text};
    ids = tok.encode(tok.apply_chat_template(std::span<const ChatMessage>(&msg, 1), true));
  } else {
    ids = tok.encode(text);
  }
  check(!ids.empty(), ErrorCode::kInvalidArgument, "--text encodes to no tokens");
  const int block_size = static_cast<int>(args.integer("block-size", 16));
  check(block_size >= 1 && block_size <= 1024, ErrorCode::kInvalidArgument,
        "--block-size must be in [1, 1024]");
  const long long chunk = args.integer("chunk", 0);
  check(chunk >= 0 && chunk <= (1 << 30), ErrorCode::kInvalidArgument, "--chunk must be >= 0 (0: one pass)");
  PolicySelector<AnySparseAttention> sparse(make_sparse_policy(args.str("sparse", "dense")));
  const std::vector<float> logits =
      prompt_logits(model, ids, block_size, backend_from_args(args).get(), &sparse, static_cast<int>(chunk));
  write_npy(out, logits, static_cast<std::int64_t>(ids.size()), model->config().vocab);
  std::printf("wrote %s: %zu tokens x %d vocab\n", out.c_str(), ids.size(), model->config().vocab);
  if (sparse.stats().selections > 0)
    std::printf("sparse %s: density %.3f over %lld masks (%lld dense), mask building %.3f s\n",
                sparse.policy().name().c_str(), sparse.stats().density(),
                static_cast<long long>(sparse.stats().selections),
                static_cast<long long>(sparse.stats().dense_fallbacks), sparse.stats().select_s);
  return 0;
}

}  // namespace chunkwise::cli
