// What a caller submits and what comes back.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "chunkwise/core/sampling.hpp"
#include "chunkwise/core/segment_kind.hpp"
#include "chunkwise/core/types.hpp"

namespace chunkwise {

// One part of a prompt given in parts: its role and its tokens, or its text (tokenized on its own,
// so that a chunk has the same tokens, and the same chunk-store key, in every prompt it is part of).
struct RequestSegment {
  SegmentKind kind = SegmentKind::kChunk;
  std::string text;             // tokenized when tokens is empty
  std::vector<TokenId> tokens;  // used when non-empty
};

struct Request {
  std::string label;                   // caller's id, echoed back
  std::vector<TokenId> prompt_tokens;  // used when non-empty
  std::string prompt_text;             // tokenized when prompt_tokens is empty
  bool chat = false;                   // wrap prompt_text as one user message in the chat template
  // A prompt in parts, for chunk reuse (SessionConfig::chunk_store): the prompt is the segments'
  // tokens in order. Used instead of prompt_tokens and prompt_text, which must then be empty, and
  // without chat (the segments carry any template text themselves). The last segment should be
  // the question: the row whose logits are sampled is always computed, so a trailing chunk is
  // never loaded.
  std::vector<RequestSegment> segments;
  SamplingParams sampling;
  int max_new_tokens = 64;
  std::vector<TokenId> stop_tokens;  // in addition to the model's EOS when stop_at_eos
  bool stop_at_eos = true;
  int priority = 0;        // higher runs first where a policy orders by it, and its cached KV is kept longer
  std::string cache_salt;  // prefix-cache namespace: requests share cached KV only within one salt
};

enum class FinishReason { kStop, kLength, kCancelled };

constexpr const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "?";
}

struct RequestTimings {
  double submitted_s = 0;    // session clock
  double first_token_s = 0;  // session clock
  double finished_s = 0;
  std::vector<double> token_s;  // session clock of every generated token
  [[nodiscard]] double ttft() const { return first_token_s - submitted_s; }
};

struct FinishedRequest {
  RequestId id = 0;
  std::string label;
  std::vector<TokenId> prompt_tokens;
  std::vector<TokenId> output_tokens;  // the stop token, if one ended it, is not included
  std::string output_text;
  FinishReason reason = FinishReason::kLength;
  RequestTimings timings;
  int prompt_tokens_computed = 0;  // prompt tokens whose KV this request computed (recomputes included)
  int prompt_tokens_cached = 0;    // prompt tokens found in the prefix cache at its first admission
  int prompt_tokens_reused = 0;    // prompt tokens whose KV came from the chunk store and was kept
  int preemptions = 0;
};

}  // namespace chunkwise
