// The byte-level BPE tokenizer on a tiny hand-made vocabulary (no model needed): pre-tokenizers
// (expected pieces taken from Hugging Face tokenizers), merge order, added tokens, decode, errors,
// tokenizer.json loading and the ChatML template renderer.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "../../src/model/detail/tokenizer_pretok.hpp"
#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/model/tokenizer.hpp"

namespace {

using chunkwise::ChatMessage;
using chunkwise::Error;
using chunkwise::ErrorCode;
using chunkwise::TokenId;
using chunkwise::Tokenizer;
using chunkwise::TokenizerSpec;

// GPT-2's bytes_to_unicode, written independently of the implementation.
std::string byte_char(int b) {
  int cp = b;
  if (!((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
    int n = 0;
    for (int k = 0; k < b; ++k) {
      if (!((k >= '!' && k <= '~') || (k >= 0xA1 && k <= 0xAC) || (k >= 0xAE && k <= 0xFF))) ++n;
    }
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// 256 byte tokens (id = byte), merged tokens in merge order, then added tokens.
TokenizerSpec tiny_spec(const std::string& pre = "gpt2") {
  TokenizerSpec spec;
  spec.pre = pre;
  for (int b = 0; b < 256; ++b) spec.tokens.push_back(byte_char(b));
  const std::string sp = byte_char(' ');  // "Ġ"
  // "b c" ranks before "a b", so "abc" is a + bc.
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"},         {"he", "ll"}, {"hell", "o"}, {sp, "w"},  {"o", "r"}, {sp + "w", "or"},
      {"l", "d"}, {sp + "wor", "ld"}, {"a", "a"},   {"b", "c"},    {"a", "b"}, {"1", "2"}, {sp, sp},
  };
  for (const auto& [a, b] : merges) {
    spec.merges.push_back(a + " " + b);
    spec.tokens.push_back(a + b);
  }
  spec.token_types.assign(spec.tokens.size(), 1);
  for (const auto& [text, type] : std::vector<std::pair<std::string, int>>{
           {"<|im_start|>", 3}, {"<|im_end|>", 3}, {"<|im", 4}, {"<extra>", 4}, {"<|endoftext|>", 3}}) {
    spec.tokens.push_back(text);
    spec.token_types.push_back(type);
  }
  spec.eos = static_cast<std::int32_t>(spec.tokens.size()) - 1;  // <|endoftext|>
  spec.bos = spec.eos;
  return spec;
}

std::vector<std::string> pieces(chunkwise::detail::PreKind kind, const std::string& text) {
  chunkwise::detail::PreTokenizer pt(kind);
  chunkwise::detail::Pieces p;
  pt.split(text, p);
  std::vector<std::string> out;
  for (const auto& [b, e] : p) out.push_back(text.substr(b, e - b));
  return out;
}

using V = std::vector<std::string>;

}  // namespace

TEST_CASE("pre-tokenizers split like Hugging Face's regexes", "[tokenizer]") {
  using chunkwise::detail::PreKind;
  SECTION("gpt2") {
    CHECK(pieces(PreKind::kGpt2, "Hello world") == V{"Hello", " world"});
    CHECK(pieces(PreKind::kGpt2, "I'm  fine\n\n  ok") == V{"I", "'m", " ", " fine", "\n\n ", " ok"});
    CHECK(pieces(PreKind::kGpt2, "abc 12345 x") == V{"abc", " 12345", " x"});
    CHECK(pieces(PreKind::kGpt2, "a\tb  \n") == V{"a", "\t", "b", "  \n"});
    CHECK(pieces(PreKind::kGpt2, "don'T say 'RE \xC5\xBFt") ==
          V{"don", "'", "T", " say", " '", "RE", " \xC5\xBFt"});
    CHECK(pieces(PreKind::kGpt2, " !!?\r\n\r\nx") == V{" !!?", "\r\n\r", "\n", "x"});
    CHECK(pieces(PreKind::kGpt2, "").empty());
  }
  SECTION("smollm: every digit alone, then gpt2 on the rest") {
    CHECK(pieces(PreKind::kDigitsGpt2, "abc 12345 x") == V{"abc", " ", "1", "2", "3", "4", "5", " x"});
    CHECK(pieces(PreKind::kDigitsGpt2, "x=1234567;\n\n\tfoo()") ==
          V{"x", "=", "1", "2", "3", "4", "5", "6", "7", ";", "\n\n", "\t", "foo", "()"});
    // Arabic-Indic digits are \p{N} too.
    CHECK(pieces(PreKind::kDigitsGpt2, "\xD9\xA3\xD9\xA4") == V{"\xD9\xA3", "\xD9\xA4"});
  }
  SECTION("llama3 and qwen2") {
    CHECK(pieces(PreKind::kLlama3, "I'm  fine\n\n  ok") == V{"I", "'m", " ", " fine", "\n\n", " ", " ok"});
    CHECK(pieces(PreKind::kLlama3, "abc 12345 x") == V{"abc", " ", "123", "45", " x"});
    CHECK(pieces(PreKind::kQwen2, "abc 12345 x") == V{"abc", " ", "1", "2", "3", "4", "5", " x"});
    CHECK(pieces(PreKind::kLlama3, "a\tb  \n") == V{"a", "\tb", "  \n"});
    CHECK(pieces(PreKind::kLlama3, "don'T say 'RE \xC5\xBFt") ==
          V{"don", "'T", " say", " '", "RE", " \xC5\xBFt"});
    CHECK(pieces(PreKind::kLlama3, " !!?\r\n\r\nx") == V{" !!?\r\n\r\n", "x"});
    CHECK(pieces(PreKind::kLlama3, "x=1234567;\n\n\tfoo()") ==
          V{"x", "=", "123", "456", "7", ";\n\n", "\tfoo", "()"});
    // (?i) folds U+017F onto 's'.
    CHECK(pieces(PreKind::kLlama3, "x'\xC5\xBFt") == V{"x", "'\xC5\xBF", "t"});
  }
  SECTION("invalid UTF-8 is kept byte for byte") {
    const std::string bad = "ab\xFF\xFE cd\x80";
    std::string joined;
    for (const auto& p : pieces(PreKind::kGpt2, bad)) joined += p;
    CHECK(joined == bad);
  }
  SECTION("names") {
    CHECK(chunkwise::detail::pre_kind_from_name("smollm") == PreKind::kDigitsGpt2);
    CHECK(chunkwise::detail::pre_kind_from_name("llama-bpe") == PreKind::kLlama3);
    CHECK(chunkwise::detail::pre_kind_from_name("default") == PreKind::kGpt2);
    CHECK_FALSE(chunkwise::detail::pre_kind_from_name("deepseek-llm").has_value());
  }
}

TEST_CASE("BPE merges by rank", "[tokenizer]") {
  const Tokenizer tok(tiny_spec());
  const auto id = [&](const std::string& t) { return tok.find(t); };
  const std::string sp = byte_char(' ');
  CHECK(tok.encode("hello world") == std::vector<TokenId>{id("hello"), id(sp + "world")});
  CHECK(tok.encode("hello") == std::vector<TokenId>{id("hello")});
  // Equal ranks: leftmost first.
  CHECK(tok.encode("aaa") == std::vector<TokenId>{id("aa"), id("a")});
  CHECK(tok.encode("aaaa") == std::vector<TokenId>{id("aa"), id("aa")});
  // Lower rank wins regardless of position.
  CHECK(tok.encode("abc") == std::vector<TokenId>{id("a"), id("bc")});
  CHECK(tok.encode("ab") == std::vector<TokenId>{id("ab")});
  CHECK(tok.encode("12") == std::vector<TokenId>{id("12")});
  CHECK(tok.encode("") == std::vector<TokenId>{});
  // Unmerged bytes map to their byte tokens (id = byte value here).
  CHECK(tok.encode("\xE4\xBD\xA0") == std::vector<TokenId>{0xE4, 0xBD, 0xA0});
  CHECK(tok.encode("  ") == std::vector<TokenId>{id(sp + sp)});
  // Repeated calls hit the cache and give the same answer.
  CHECK(tok.encode("hello world hello world") == tok.encode("hello world hello world"));

  const Tokenizer smol(tiny_spec("smollm"));
  CHECK(smol.encode("12") == std::vector<TokenId>{'1', '2'});
}

TEST_CASE("added tokens are matched verbatim, longest first", "[tokenizer]") {
  const Tokenizer tok(tiny_spec());
  const TokenId start = tok.find("<|im_start|>");
  const TokenId end = tok.find("<|im_end|>");
  const TokenId im = tok.find("<|im");
  const TokenId extra = tok.find("<extra>");
  REQUIRE(start >= 0);
  REQUIRE(im >= 0);
  CHECK(tok.encode("<|im_start|>hello<|im_end|>") == std::vector<TokenId>{start, tok.find("hello"), end});
  CHECK(tok.encode("<|im_start|><|im_end|>") == std::vector<TokenId>{start, end});
  // "<|im" is a user-defined prefix of both: the longer control token wins.
  CHECK(tok.encode("<|im_x") == std::vector<TokenId>{im, '_', 'x'});
  SECTION("parse_special=false keeps control tokens as text, user-defined ones still match") {
    const auto ids = tok.encode("<|im_start|>", false);
    CHECK(ids.front() == im);
    CHECK(tok.decode(ids) == "<|im_start|>");
    CHECK(tok.encode("a<extra>b", false) == std::vector<TokenId>{'a', extra, 'b'});
  }
  SECTION("pre-tokenization restarts after an added token") {
    CHECK(tok.encode("hello<extra> world") ==
          std::vector<TokenId>{tok.find("hello"), extra, tok.find("Ġworld")});
  }
}

TEST_CASE("decode maps back through the byte alphabet", "[tokenizer]") {
  const Tokenizer tok(tiny_spec());
  for (const std::string& s : std::vector<std::string>{
           "hello world", "  x\n\t y", "caf\xC3\xA9 \xF0\x9F\x98\x80", "<|im_start|>a<|im_end|>",
           "bad \xFF\xFE utf8 \x80", std::string("nul\0byte", 8)}) {
    CHECK(tok.decode(tok.encode(s)) == s);
  }
  const std::vector<TokenId> ids = tok.encode("<|im_start|>hi<|im_end|><extra>");
  CHECK(tok.decode(ids, true) == "hi<extra>");  // control tokens dropped, user-defined kept
  // A token split inside a UTF-8 sequence decodes to its raw bytes.
  CHECK(tok.decode(std::vector<TokenId>{0xE4}) == "\xE4");
  REQUIRE_THROWS_AS(tok.decode(std::vector<TokenId>{tok.vocab_size()}), Error);
  try {
    (void)tok.decode(std::vector<TokenId>{-1});
    FAIL("no throw");
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kTokenOutOfRange);
  }
}

TEST_CASE("bytes without a token are dropped, as HF does without unk_token", "[tokenizer]") {
  TokenizerSpec spec = tiny_spec();
  spec.tokens['x'] = "not-a-byte";
  spec.tokens['\x04'] = "not-a-byte-either";
  const Tokenizer tok(spec);
  CHECK(tok.encode("x").empty());
  CHECK(tok.encode("\x04\x04").empty());
  // The neighbours of a dropped byte become adjacent and merge.
  CHECK(tok.encode("hexllo") == std::vector<TokenId>{tok.find("hello")});
  CHECK(tok.encode("axb") == std::vector<TokenId>{tok.find("ab")});
  CHECK(tok.encode("a\x04") == std::vector<TokenId>{'a'});
}

TEST_CASE("tokenizer accessors and BOS", "[tokenizer]") {
  TokenizerSpec spec = tiny_spec();
  const Tokenizer tok(spec);
  CHECK(tok.vocab_size() == static_cast<int>(spec.tokens.size()));
  CHECK(tok.eos() == spec.eos);
  CHECK(tok.bos() == spec.bos);
  CHECK(tok.is_special(tok.find("<|im_end|>")));
  CHECK_FALSE(tok.is_special(tok.find("<extra>")));
  CHECK_FALSE(tok.is_special(tok.find("hello")));
  CHECK_FALSE(tok.is_special(-5));
  CHECK(tok.find("no such token") == -1);
  CHECK(tok.encode("hello").size() == 1);

  spec.add_bos = true;
  const Tokenizer with_bos(spec);
  CHECK(with_bos.encode("hello") == std::vector<TokenId>{spec.bos, with_bos.find("hello")});
  CHECK(with_bos.encode("") == std::vector<TokenId>{spec.bos});

  Tokenizer from(spec);
  const Tokenizer moved = std::move(from);
  CHECK(moved.encode("hello").size() == 2);
}

namespace {
ErrorCode construct_error(const TokenizerSpec& spec) {
  try {
    Tokenizer t(spec);
  } catch (const Error& e) {
    return e.code();
  }
  FAIL("no throw");
  return ErrorCode::kIo;
}
}  // namespace

TEST_CASE("bad tokenizer specs are rejected", "[tokenizer]") {
  TokenizerSpec spec = tiny_spec("deepseek-coder");
  CHECK(construct_error(spec) == ErrorCode::kUnsupported);
  spec = tiny_spec();
  spec.model = "llama";
  CHECK(construct_error(spec) == ErrorCode::kUnsupported);
  spec = tiny_spec();
  spec.merges.push_back("nope missing");
  CHECK(construct_error(spec) == ErrorCode::kTokenizer);
  spec = tiny_spec();
  spec.merges.push_back("nospace");
  CHECK(construct_error(spec) == ErrorCode::kTokenizer);
  spec = tiny_spec();
  spec.token_types.pop_back();
  CHECK(construct_error(spec) == ErrorCode::kTokenizer);
  spec = tiny_spec();
  spec.eos = static_cast<std::int32_t>(spec.tokens.size());
  CHECK(construct_error(spec) == ErrorCode::kTokenizer);
  spec = tiny_spec();
  spec.bos = -1;
  spec.add_bos = true;
  CHECK(construct_error(spec) == ErrorCode::kTokenizer);
  CHECK(construct_error(TokenizerSpec{}) == ErrorCode::kTokenizer);
}

TEST_CASE("ChatML chat templates render like transformers", "[tokenizer]") {
  const std::string smollm2 =
      "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
      "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
      "Face<|im_end|>\n' "
      "}}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% "
      "endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
  TokenizerSpec spec = tiny_spec();
  spec.chat_template = smollm2;
  const Tokenizer tok(spec);
  const std::vector<ChatMessage> user{{"user", "Hi"}};
  CHECK(tok.apply_chat_template(user) ==
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const std::vector<ChatMessage> sys{{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}};
  CHECK(tok.apply_chat_template(sys, false) ==
        "<|im_start|>system\nBe "
        "brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n");
  REQUIRE_THROWS_AS(tok.apply_chat_template(std::vector<ChatMessage>{}), Error);

  SECTION("whitespace control, trim_blocks, lstrip_blocks and escapes") {
    spec.chat_template =
        "{# comment #}\n{% for m in messages %}\n  {{- '<|im_start|>' ~ m.role + '\\n' }}{{ m.content }}"
        "{{ '<|im_end|>\\n' -}}\n   \n{% endfor %}\n{% if add_generation_prompt %}\n  {{- "
        "'<|im_start|>assistant\\n' }}\n"
        "{% elif loop is defined %}x{% else %}{{ eos_token }}{% endif %}\n";
    // "loop is defined" is outside the subset.
    const Tokenizer bad(spec);
    REQUIRE_THROWS_AS(bad.apply_chat_template(user), Error);

    spec.chat_template =
        "{# comment #}\n{% for m in messages %}\n  {{- '<|im_start|>' ~ m.role + '\\n' }}{{ m.content }}"
        "{{ '<|im_end|>\\n' -}}\n   \n{% endfor %}\n{% if add_generation_prompt %}\n  {{- "
        "'<|im_start|>assistant\\n' }}\n"
        "{% else %}{{ eos_token }}{% endif %}\n";
    const Tokenizer t2(spec);
    // Checked with jinja2 (trim_blocks, lstrip_blocks): the newline after a {{ }} tag stays.
    CHECK(t2.apply_chat_template(user, true) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\n");
    CHECK(t2.apply_chat_template(user, false) == "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>");
  }
  SECTION("templates outside the subset are refused") {
    for (const std::string& t : std::vector<std::string>{
             "{% for message in messages %}{{ message.content }}{% endfor %}",  // not ChatML
             "{% set x = 1 %}<|im_start|>",                                     // set
             "<|im_start|>{{ messages[0].content | trim }}",                    // filter
             "<|im_start|>{{ tools }}",                                         // unknown name
             "<|im_start|>{% for m in messages %}",                             // unterminated
         }) {
      spec.chat_template = t;
      const Tokenizer t3(spec);
      try {
        (void)t3.apply_chat_template(user);
        FAIL("rendered " << t);
      } catch (const Error& e) {
        CHECK(e.code() == ErrorCode::kUnsupported);
      }
    }
    spec.chat_template.clear();
    const Tokenizer none(spec);
    REQUIRE_THROWS_AS(none.apply_chat_template(user), Error);
  }
}

TEST_CASE("spec_from_json reads a Hugging Face tokenizer.json", "[tokenizer]") {
  const auto dir = std::filesystem::temp_directory_path() / "chunkwise_tok_json_test";
  std::filesystem::create_directories(dir);
  const TokenizerSpec ref = tiny_spec();
  // vocab object, merges in both spellings, added tokens, Digits+ByteLevel pre-tokenizer.
  auto quote = [](const std::string& s) {
    std::string q = "\"";
    for (const char c : s) {
      if (c == '"' || c == '\\') {
        q += '\\';
        q += c;
      } else if (static_cast<unsigned char>(c) < 0x20) {
        static const char* hex = "0123456789abcdef";
        q += "\\u00";
        q += hex[(c >> 4) & 0xF];
        q += hex[c & 0xF];
      } else {
        q += c;
      }
    }
    return q + "\"";
  };
  std::string vocab;
  std::string added;
  for (std::size_t i = 0; i < ref.tokens.size(); ++i) {
    if (ref.token_types[i] == 1) {
      vocab += (vocab.empty() ? "" : ",") + quote(ref.tokens[i]) + ":" + std::to_string(i);
    } else {
      added += std::string(added.empty() ? "" : ",") + "{\"id\":" + std::to_string(i) +
               ",\"content\":" + quote(ref.tokens[i]) +
               ",\"special\":" + (ref.token_types[i] == 3 ? "true" : "false") + "}";
    }
  }
  std::string merges;
  for (std::size_t i = 0; i < ref.merges.size(); ++i) {
    const auto sp = ref.merges[i].find(' ');
    merges += i == 0 ? "" : ",";
    merges += i % 2 == 0 ? quote(ref.merges[i])
                         : "[" + quote(ref.merges[i].substr(0, sp)) + "," +
                               quote(ref.merges[i].substr(sp + 1)) + "]";
  }
  const auto write = [&](const std::string& name, const std::string& pre, const std::string& normalizer) {
    std::ofstream(dir / name)
        << "{\"version\":\"1.0\",\"normalizer\":" << normalizer << ",\"pre_tokenizer\":" << pre
        << ",\"added_tokens\":[" << added
        << "],\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{" << vocab
        << "},\"merges\":[" << merges << "]}}";
  };
  const std::string byte_level =
      R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";
  write("tokenizer.json",
        R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},)" + byte_level +
            "]}",
        "null");
  std::ofstream(dir / "tokenizer_config.json")
      << R"({"bos_token":"<|im_start|>","eos_token":{"content":"<|im_end|>"},"chat_template":"<|im_start|>{{ messages[0].content }}"})";

  const TokenizerSpec spec = Tokenizer::spec_from_json(dir / "tokenizer.json");
  CHECK(spec.pre == "smollm");
  CHECK(spec.tokens == ref.tokens);
  CHECK(spec.token_types == ref.token_types);
  CHECK(spec.merges == ref.merges);
  const Tokenizer tok(spec);
  CHECK(tok.bos() == tok.find("<|im_start|>"));
  CHECK(tok.eos() == tok.find("<|im_end|>"));
  CHECK_FALSE(spec.add_bos);
  CHECK(tok.apply_chat_template(std::vector<ChatMessage>{{"user", "x"}}) == "<|im_start|>x");
  CHECK(tok.encode("hello 12") == std::vector<TokenId>{tok.find("hello"), tok.find("Ġ"), '1', '2'});

  write("plain.json", byte_level, "null");
  CHECK(Tokenizer::spec_from_json(dir / "plain.json").pre == "gpt2");
  CHECK(Tokenizer::spec_from_json(dir / "plain.json").eos == -1);  // no plain_config.json

  const auto code_of = [&](const std::string& name) {
    try {
      (void)Tokenizer::spec_from_json(dir / name);
    } catch (const Error& e) {
      return e.code();
    }
    FAIL("no throw");
    return ErrorCode::kIo;
  };
  write("nfc.json", byte_level, R"({"type":"NFC"})");
  CHECK(code_of("nfc.json") == ErrorCode::kTokenizer);
  write("metaspace.json", R"({"type":"Metaspace","replacement":"_"})", "null");
  CHECK(code_of("metaspace.json") == ErrorCode::kTokenizer);
  std::ofstream(dir / "broken.json") << "{\"model\": [";
  CHECK(code_of("broken.json") == ErrorCode::kTokenizer);
  CHECK(code_of("missing.json") == ErrorCode::kIo);
  std::filesystem::remove_all(dir);
}

TEST_CASE("one tokenizer encodes from several threads", "[tokenizer]") {
  const Tokenizer tok(tiny_spec());
  std::string text;
  for (int i = 0; i < 300; ++i) {
    text += "hello world abc ";
    text += std::to_string(i);
    text += " aaaa\n";
  }
  const std::vector<TokenId> want = tok.encode(text);
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < ok.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < 20; ++r) ok[t] += tok.encode(text) == want ? 1 : 0;
    });
  }
  for (auto& th : threads) th.join();
  for (const int n : ok) CHECK(n == 20);
}
