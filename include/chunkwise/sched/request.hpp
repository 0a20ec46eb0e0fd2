// What a caller submits and what comes back.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "chunkwise/core/sampling.hpp"
#include "chunkwise/core/types.hpp"

namespace chunkwise {

struct Request {
  std::string label;                   // caller's id, echoed back
  std::vector<TokenId> prompt_tokens;  // used when non-empty
  std::string prompt_text;             // tokenized when prompt_tokens is empty
  bool chat = false;                   // wrap prompt_text as one user message in the chat template
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
  int preemptions = 0;
};

}  // namespace chunkwise
