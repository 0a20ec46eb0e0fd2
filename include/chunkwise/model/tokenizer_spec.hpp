// What a byte-level BPE tokenizer is built from; filled from GGUF metadata
// (tokenizer.ggml.*) or from a Hugging Face tokenizer.json.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace chunkwise {

struct TokenizerSpec {
  std::string model = "gpt2";       // tokenizer.ggml.model; only byte-level BPE ("gpt2") is supported
  std::string pre = "default";      // pre-tokenizer name as llama.cpp spells it ("smollm", "llama-bpe", ...)
  std::vector<std::string> tokens;  // id -> token text (byte-level alphabet)
  std::vector<std::int32_t>
      token_types;  // llama.cpp types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
  std::vector<std::string> merges;  // "left right", highest priority first
  std::int32_t bos = -1;
  std::int32_t eos = -1;
  std::int32_t pad = -1;
  std::int32_t unk = -1;
  bool add_bos = false;
  std::string chat_template;  // Jinja source, as shipped with the model
};

}  // namespace chunkwise
