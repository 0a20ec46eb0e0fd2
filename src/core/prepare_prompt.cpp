#include <string>

#include "chunkwise/core/error.hpp"
#include "chunkwise/sched/inference_session.hpp"

namespace chunkwise::detail {

std::vector<TokenId> prepare_prompt(const Model& model, const Request& r, int kv_capacity_tokens) {
  const ModelConfig& c = model.config();
  check(r.max_new_tokens >= 1, ErrorCode::kInvalidArgument,
        "max_new_tokens must be >= 1, got " + std::to_string(r.max_new_tokens));
  validate(r.sampling);
  std::vector<TokenId> prompt = r.prompt_tokens;
  if (prompt.empty()) {
    check(!r.prompt_text.empty(), ErrorCode::kInvalidArgument, "request has neither prompt tokens nor text");
    const Tokenizer& tok = model.tokenizer();
    if (r.chat) {
      const ChatMessage msg{"user", r.prompt_text};
      prompt = tok.encode(tok.apply_chat_template(std::span<const ChatMessage>(&msg, 1), true));
    } else {
      prompt = tok.encode(r.prompt_text);
    }
    check(!prompt.empty(), ErrorCode::kInvalidArgument, "prompt encodes to no tokens");
  }
  for (TokenId t : prompt)
    check(t >= 0 && t < c.vocab, ErrorCode::kTokenOutOfRange,
          "prompt token id " + std::to_string(t) + " outside the vocabulary [0, " + std::to_string(c.vocab) +
              ")");
  for (TokenId t : r.stop_tokens)
    check(t >= 0 && t < c.vocab, ErrorCode::kTokenOutOfRange,
          "stop token id " + std::to_string(t) + " outside the vocabulary [0, " + std::to_string(c.vocab) +
              ")");
  const long long total = static_cast<long long>(prompt.size()) + r.max_new_tokens;
  check(total <= c.max_context, ErrorCode::kContextOverflow,
        "prompt of " + std::to_string(prompt.size()) + " tokens plus max_new_tokens " +
            std::to_string(r.max_new_tokens) + " exceeds the model's context of " +
            std::to_string(c.max_context));
  check(total <= kv_capacity_tokens, ErrorCode::kKvExhausted,
        "request needs KV for " + std::to_string(total) + " tokens but the whole pool holds " +
            std::to_string(kv_capacity_tokens));
  return prompt;
}

}  // namespace chunkwise::detail
