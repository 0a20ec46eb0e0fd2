// Byte-level BPE tokenizer (GPT-2 family, as used by SmolLM2, Llama 3, Qwen2), built from a
// TokenizerSpec; special tokens are matched verbatim before BPE.
#pragma once

#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "chunkwise/core/types.hpp"
#include "chunkwise/model/tokenizer_spec.hpp"

namespace chunkwise {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

class Tokenizer {
 public:
  explicit Tokenizer(TokenizerSpec spec);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Reads a Hugging Face tokenizer.json (model.type BPE, byte-level); throws Error(kTokenizer).
  static TokenizerSpec spec_from_json(const std::filesystem::path& tokenizer_json);

  // Adds BOS only when the spec says add_bos. parse_special: "<|im_start|>" in text becomes
  // the special token rather than its characters.
  [[nodiscard]] std::vector<TokenId> encode(std::string_view text, bool parse_special = true) const;
  // Throws Error(kTokenOutOfRange) on an id outside the vocabulary.
  [[nodiscard]] std::string decode(std::span<const TokenId> ids, bool skip_special = false) const;
  [[nodiscard]] int vocab_size() const;
  [[nodiscard]] TokenId bos() const;
  [[nodiscard]] TokenId eos() const;
  [[nodiscard]] bool is_special(TokenId id) const;
  // Token id of an exact token string, or -1.
  [[nodiscard]] TokenId find(std::string_view token) const;
  // Renders the model's chat template (ChatML for SmolLM2) to text.
  [[nodiscard]] std::string apply_chat_template(std::span<const ChatMessage> messages,
                                                bool add_generation_prompt = true) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chunkwise
