// The tokenizer against Hugging Face tokenizers (tests/oracle/make_tokenizer_golden.py): every
// golden string encodes to the oracle's ids under SmolLM2's pre-tokenizer and the three others we
// implement, decodes back to itself, and the chat template renders as transformers renders it.
// Checked twice: from SmolLM2's tokenizer.json (always) and from the GGUF's metadata (when the
// default model is present).
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/model/loader.hpp"
#include "chunkwise/model/tokenizer.hpp"

namespace {

using chunkwise::ChatMessage;
using chunkwise::TokenId;
using chunkwise::Tokenizer;
using chunkwise::TokenizerSpec;
using nlohmann::json;
namespace fs = std::filesystem;

const fs::path kData = CHUNKWISE_TEST_DATA;

const json& golden() {
  static const json g = [] {
    std::ifstream in(kData / "tokenizer_golden.json");
    REQUIRE(in.good());
    return json::parse(in);
  }();
  return g;
}

fs::path model_path() {
  if (const char* env = std::getenv("CHUNKWISE_MODEL"); env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  return fs::path(home != nullptr ? home : "") / ".cache/chunkwise/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::string show(const std::vector<TokenId>& ids) {
  std::string s = "[";
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) s += ',';
    s += std::to_string(ids[i]);
  }
  return s + "]";
}

// Every golden string, every pre-tokenizer variant, decode round trip, chats.
void check_against_oracle(const TokenizerSpec& base) {
  const json& g = golden();
  REQUIRE(g.at("cases").size() >= 250);
  for (const auto& [variant, _] : g.at("variants").items()) {
    TokenizerSpec spec = base;
    spec.pre = variant;
    const Tokenizer tok(spec);
    std::size_t mismatches = 0;
    for (const json& c : g.at("cases")) {
      const auto text = c.at("text").get<std::string>();
      const auto want = c.at("ids").at(variant).get<std::vector<TokenId>>();
      const auto got = tok.encode(text);
      if (got != want && ++mismatches <= 10) {
        FAIL_CHECK(variant << ": " << json(text).dump() << "\n  got  " << show(got) << "\n  want "
                           << show(want));
      }
      if (variant == "smollm") {
        if (c.at("roundtrip").get<bool>()) CHECK(tok.decode(got) == text);
        if (c.contains("ids_no_special")) {
          CHECK(tok.encode(text, false) == c.at("ids_no_special").get<std::vector<TokenId>>());
        }
      }
    }
    INFO(variant << ": " << mismatches << " of " << g.at("cases").size() << " strings differ");
    CHECK(mismatches == 0);
  }

  const Tokenizer tok(base);
  std::map<std::string, Tokenizer> by_template;  // the model's own template, and the others in the file
  by_template.emplace("smollm2", base);
  for (const auto& [name, source] : g.at("chat_templates").items()) {
    TokenizerSpec spec = base;
    spec.chat_template = source.get<std::string>();
    by_template.emplace(name, std::move(spec));
  }
  for (const json& c : g.at("chats")) {
    const auto name = c.at("template").get<std::string>();
    const Tokenizer& t = by_template.at(name);
    std::vector<ChatMessage> msgs;
    for (const json& m : c.at("messages")) msgs.push_back({m.at("role"), m.at("content")});
    const std::string text = t.apply_chat_template(msgs, c.at("add_generation_prompt").get<bool>());
    INFO(name << " " << c.at("messages").dump());
    CHECK(text == c.at("text").get<std::string>());
    const auto ids = tok.encode(text);
    CHECK(ids == c.at("ids").get<std::vector<TokenId>>());
    CHECK(tok.decode(ids, true) == c.at("decoded_skip_special").get<std::string>());
  }
}

}  // namespace

TEST_CASE("tokenizer from tokenizer.json matches Hugging Face", "[tokenizer][oracle]") {
  const TokenizerSpec spec = Tokenizer::spec_from_json(kData / "smollm2_tokenizer.json");
  CHECK(spec.pre == "smollm");
  CHECK(spec.tokens.size() == 49152);
  CHECK(spec.merges.size() == 48900);
  CHECK(spec.bos == 1);
  CHECK(spec.eos == 2);
  CHECK_FALSE(spec.add_bos);
  check_against_oracle(spec);
}

TEST_CASE("tokenizer from GGUF metadata matches Hugging Face", "[tokenizer][oracle]") {
  const fs::path path = model_path();
  if (!fs::exists(path)) {
    WARN("skipped: model not found at " << path.string());
    return;
  }
  const TokenizerSpec spec = chunkwise::load_gguf_model(path).tokenizer;
  CHECK(spec.model == "gpt2");
  CHECK(spec.pre == "smollm");
  CHECK(spec.bos == 1);
  CHECK(spec.eos == 2);
  CHECK_FALSE(spec.add_bos);
  // Same vocabulary as the tokenizer.json the oracle wrote from this file.
  const TokenizerSpec json_spec = Tokenizer::spec_from_json(kData / "smollm2_tokenizer.json");
  CHECK(spec.tokens == json_spec.tokens);
  CHECK(spec.merges == json_spec.merges);
  CHECK(spec.token_types == json_spec.token_types);
  CHECK(spec.chat_template == json_spec.chat_template);
  check_against_oracle(spec);
}

TEST_CASE("encoding 100 KB of English is fast", "[tokenizer][speed]") {
  const TokenizerSpec spec = Tokenizer::spec_from_json(kData / "smollm2_tokenizer.json");
  static const char* const kWords[] = {
      "the",          "of",        "and",       "to",         "in",        "a",         "is",
      "that",         "for",       "it",        "as",         "was",       "with",      "be",
      "by",           "on",        "not",       "he",         "I",         "this",      "are",
      "or",           "his",       "from",      "at",         "which",     "but",       "have",
      "an",           "had",       "they",      "you",        "were",      "their",     "one",
      "all",          "we",        "can",       "her",        "has",       "there",     "been",
      "if",           "more",      "when",      "will",       "would",     "who",       "so",
      "no",           "model",     "language",  "tokenizer",  "inference", "memory",    "quickly",
      "unbelievable", "mountains", "river's",   "don't",      "they'll",   "Hugging",   "Face",
      "SmolLM",       "tokens",    "cache",     "throughput", "latency",   "scheduler", "attention",
      "transformer",  "weights",   "quantized", "generation"};
  std::mt19937 rng(7);
  std::string text;
  while (text.size() < 100 * 1024) {
    const std::size_t n = 5 + rng() % 15;
    for (std::size_t i = 0; i < n; ++i) {
      text += kWords[rng() % std::size(kWords)];
      text += i + 1 < n ? (rng() % 12 == 0 ? ", " : " ") : "";
    }
    if (rng() % 5 == 0) {
      text += ' ';
      text += std::to_string(rng() % 100000);
      text += ".\n";
    } else {
      text += ". ";
    }
  }
  // Worst case for the piece cache: every word different.
  std::string unique;
  while (unique.size() < 100 * 1024) {
    const std::size_t n = 2 + rng() % 10;
    unique += ' ';
    for (std::size_t i = 0; i < n; ++i) unique += static_cast<char>('a' + rng() % 26);
  }
  for (const auto& [name, input] :
       {std::pair<const char*, const std::string&>{"English", text}, {"unique words", unique}}) {
    const Tokenizer tok(spec);  // cold cache
    const auto t0 = std::chrono::steady_clock::now();
    const auto ids = tok.encode(input);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    WARN("encode " << input.size() << " bytes of " << name << ": " << ids.size() << " tokens in " << s * 1e3
                   << " ms (" << input.size() / s / 1e6 << " MB/s)");
    CHECK(tok.decode(ids) == input);
#ifdef NDEBUG
    CHECK(s < 0.5);
#endif
  }
}
