// Typed errors: every failure a caller can cause (bad files, bad requests, exhausted memory,
// bad configuration) is reported as chunkwise::Error with a code, never a crash.
#pragma once

#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

namespace chunkwise {

enum class ErrorCode {
  kIo,               // file missing, unreadable, short read
  kModelFormat,      // malformed, truncated or hostile model file
  kUnsupported,      // well-formed but not supported (unknown tensor type, architecture)
  kTokenizer,        // tokenizer data inconsistent, or text cannot be encoded
  kInvalidArgument,  // bad API or policy parameter
  kTokenOutOfRange,  // token id outside the vocabulary
  kContextOverflow,  // prompt plus generation past the model's context
  kKvExhausted,      // KV memory cannot hold a request even when running alone
  kBackend,          // device or backend failure
};

constexpr std::string_view to_string(ErrorCode c) noexcept {
  switch (c) {
    case ErrorCode::kIo:
      return "io";
    case ErrorCode::kModelFormat:
      return "model-format";
    case ErrorCode::kUnsupported:
      return "unsupported";
    case ErrorCode::kTokenizer:
      return "tokenizer";
    case ErrorCode::kInvalidArgument:
      return "invalid-argument";
    case ErrorCode::kTokenOutOfRange:
      return "token-out-of-range";
    case ErrorCode::kContextOverflow:
      return "context-overflow";
    case ErrorCode::kKvExhausted:
      return "kv-exhausted";
    case ErrorCode::kBackend:
      return "backend";
  }
  return "unknown";
}

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message)
      : std::runtime_error(std::string(to_string(code)) + ": " + message), code_(code) {}
  [[nodiscard]] ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// Throws Error(code, message) when cond is false; keeps validation one line at the call site.
inline void check(bool cond, ErrorCode code, std::string_view message) {
  if (!cond) throw Error(code, std::string(message));
}

// The same with a message built only on failure, for checks on hot paths. (enable_if rather
// than a requires-clause: CUDA translation units include this header too.)
template <class MakeMessage, class = std::enable_if_t<std::is_invocable_r_v<std::string, MakeMessage>>>
inline void check(bool cond, ErrorCode code, MakeMessage&& make_message) {
  if (!cond) throw Error(code, make_message());
}

}  // namespace chunkwise
