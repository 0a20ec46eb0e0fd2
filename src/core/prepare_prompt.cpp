#include <string>
#include <utility>

#include "chunkwise/core/error.hpp"
#include "chunkwise/sched/inference_session.hpp"

namespace chunkwise::detail {

namespace {

// The layout of a prompt given in segments; every segment is tokenized on its own, without BOS
// (only the first may start with it, when the tokenizer adds one).
PromptLayout segment_layout(const Model& model, const Request& r) {
  check(r.prompt_tokens.empty() && r.prompt_text.empty() && !r.chat, ErrorCode::kInvalidArgument,
        "a request with segments takes no prompt_tokens, prompt_text or chat");
  PromptLayout layout;
  for (std::size_t i = 0; i < r.segments.size(); ++i) {
    const RequestSegment& seg = r.segments[i];
    check(seg.kind == SegmentKind::kPrefix || seg.kind == SegmentKind::kChunk ||
              seg.kind == SegmentKind::kQuestion,
          ErrorCode::kInvalidArgument, "segment " + std::to_string(i) + " has an unknown kind");
    std::vector<TokenId> tokens = seg.tokens;
    if (tokens.empty() && !seg.text.empty()) {
      const Tokenizer& tok = model.tokenizer();
      tokens = tok.encode(seg.text);
      if (i > 0 && !tokens.empty() && tokens.front() == tok.bos() && tok.bos() >= 0)
        tokens.erase(tokens.begin());
    }
    check(!tokens.empty(), ErrorCode::kInvalidArgument,
          "segment " + std::to_string(i) + " (" + std::string(to_string(seg.kind)) + ") has no tokens");
    layout.append(seg.kind, tokens);
  }
  return layout;
}

}  // namespace

PreparedPrompt prepare_prompt(const Model& model, const Request& r, int kv_capacity_tokens) {
  const ModelConfig& c = model.config();
  check(r.max_new_tokens >= 1, ErrorCode::kInvalidArgument,
        "max_new_tokens must be >= 1, got " + std::to_string(r.max_new_tokens));
  validate(r.sampling);
  PreparedPrompt out;
  if (!r.segments.empty()) out.layout = segment_layout(model, r);
  std::vector<TokenId> prompt = r.segments.empty() ? r.prompt_tokens : out.layout.tokens;
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
    check(t >= 0 && t < c.vocab, ErrorCode::kTokenOutOfRange, [&] {
      return "prompt token id " + std::to_string(t) + " outside the vocabulary [0, " +
             std::to_string(c.vocab) + ")";
    });
  for (TokenId t : r.stop_tokens)
    check(t >= 0 && t < c.vocab, ErrorCode::kTokenOutOfRange, [&] {
      return "stop token id " + std::to_string(t) + " outside the vocabulary [0, " + std::to_string(c.vocab) +
             ")";
    });
  const long long total = static_cast<long long>(prompt.size()) + r.max_new_tokens;
  check(total <= c.max_context, ErrorCode::kContextOverflow,
        "prompt of " + std::to_string(prompt.size()) + " tokens plus max_new_tokens " +
            std::to_string(r.max_new_tokens) + " exceeds the model's context of " +
            std::to_string(c.max_context));
  check(total <= kv_capacity_tokens, ErrorCode::kKvExhausted,
        "request needs KV for " + std::to_string(total) + " tokens but the whole pool holds " +
            std::to_string(kv_capacity_tokens));
  out.tokens = std::move(prompt);
  return out;
}

}  // namespace chunkwise::detail
