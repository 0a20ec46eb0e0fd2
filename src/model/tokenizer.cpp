// Byte-level BPE tokenizer (GPT-2 / Hugging Face tokenizers semantics): added tokens are cut out
// of the text first (leftmost-longest), the rest is pre-tokenized, each piece's bytes are mapped
// into the byte-level alphabet and merged by rank exactly as HF's BPE model does.
#include "chunkwise/model/tokenizer.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "detail/tokenizer_chat.hpp"
#include "detail/tokenizer_pretok.hpp"
#include "detail/tokenizer_unicode.hpp"

namespace chunkwise {

namespace {

constexpr std::int32_t kTypeControl = 3;
constexpr std::int32_t kTypeUserDefined = 4;

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

constexpr std::uint64_t pair_key(TokenId a, TokenId b) noexcept {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

struct MergeHash {
  std::size_t operator()(std::uint64_t k) const noexcept {
    // splitmix64 finalizer: std::hash<uint64_t> is the identity, which clusters these keys.
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ULL;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebULL;
    k ^= k >> 31;
    return static_cast<std::size_t>(k);
  }
};

struct MergeInfo {
  std::int32_t rank;
  TokenId merged;
};

// An added token (control or user-defined) matched verbatim in the text before BPE.
struct AddedToken {
  std::string text;
  TokenId id;
  bool control;
};

std::string describe_token(const std::string& t) {
  return t.size() <= 40 ? "'" + t + "'" : "'" + t.substr(0, 40) + "...'";
}

}  // namespace

struct Tokenizer::Impl {
  TokenizerSpec spec;
  detail::PreKind pre = detail::PreKind::kGpt2;
  bool ignore_merges = false;  // Llama 3: a piece that is a whole vocabulary entry is taken as is
  StringMap<TokenId> token_to_id;
  std::array<TokenId, 256> byte_token{};
  std::unordered_map<std::uint64_t, MergeInfo, MergeHash> merges;
  std::vector<std::string> token_bytes;  // what decode emits for each id
  // Added tokens by first byte, longest first, so the first hit at a position is the longest.
  std::array<std::vector<AddedToken>, 256> added_by_first;
  std::optional<detail::ChatTemplate> chat;
  std::string chat_error;

  // Pieces seen before and their ids; BPE is the costly step and natural text repeats words.
  static constexpr std::size_t kCacheLimit = 1 << 16;
  mutable std::mutex cache_mutex;
  mutable StringMap<std::vector<TokenId>> cache;

  explicit Impl(TokenizerSpec s);
  void bpe(std::string_view word, std::vector<TokenId>& out) const;
  void encode_plain(std::string_view text, std::vector<TokenId>& out) const;
  [[nodiscard]] bool is_type(TokenId id, std::int32_t type) const {
    return id >= 0 && static_cast<std::size_t>(id) < spec.token_types.size() && spec.token_types[id] == type;
  }
};

Tokenizer::Impl::Impl(TokenizerSpec s) : spec(std::move(s)) {
  check(spec.model == "gpt2", ErrorCode::kUnsupported,
        "tokenizer model '" + spec.model + "' is not supported; only byte-level BPE ('gpt2') is");
  const auto kind = detail::pre_kind_from_name(spec.pre);
  check(kind.has_value(), ErrorCode::kUnsupported,
        "pre-tokenizer '" + spec.pre +
            "' is not supported (known: default, gpt2, smollm, starcoder, refact, codeshell, llama-bpe, "
            "llama3, qwen2)");
  pre = *kind;
  ignore_merges = pre == detail::PreKind::kLlama3;

  const std::size_t n = spec.tokens.size();
  check(n > 0, ErrorCode::kTokenizer, "tokenizer has no tokens");
  check(n < (std::size_t{1} << 31), ErrorCode::kTokenizer, "tokenizer vocabulary too large");
  if (spec.token_types.empty()) spec.token_types.assign(n, 1);
  check(spec.token_types.size() == n, ErrorCode::kTokenizer,
        "token_types has " + std::to_string(spec.token_types.size()) + " entries for " + std::to_string(n) +
            " tokens");
  for (const std::int32_t id : {spec.bos, spec.eos, spec.pad, spec.unk}) {
    check(id >= -1 && id < static_cast<std::int32_t>(n), ErrorCode::kTokenizer,
          "special token id " + std::to_string(id) + " outside the vocabulary");
  }
  check(!spec.add_bos || spec.bos >= 0, ErrorCode::kTokenizer, "add_bos is set but there is no bos token");

  token_to_id.reserve(n);
  for (std::size_t i = 0; i < n; ++i) token_to_id.emplace(spec.tokens[i], static_cast<TokenId>(i));

  // A byte without a token (SmolLM2 has none for 0xC0, 0xF5..0xFF, a few C0 controls) is dropped
  // when it occurs, as HF's BPE does when the model has no unk_token.
  const auto& alphabet = detail::byte_alphabet();
  for (std::size_t b = 0; b < 256; ++b) {
    const auto it = token_to_id.find(alphabet.byte_to_utf8[b]);
    byte_token[b] = it == token_to_id.end() ? -1 : it->second;
  }

  merges.reserve(spec.merges.size());
  for (std::size_t r = 0; r < spec.merges.size(); ++r) {
    const std::string& m = spec.merges[r];
    const std::size_t sp = m.find(' ');
    check(sp != std::string::npos && sp > 0 && sp + 1 < m.size(), ErrorCode::kTokenizer,
          "malformed merge " + describe_token(m));
    const std::string_view left(m.data(), sp);
    const std::string_view right(m.data() + sp + 1, m.size() - sp - 1);
    const auto l = token_to_id.find(left);
    const auto rr = token_to_id.find(right);
    const auto merged = token_to_id.find(std::string(left) + std::string(right));
    check(l != token_to_id.end() && rr != token_to_id.end() && merged != token_to_id.end(),
          ErrorCode::kTokenizer, "merge " + describe_token(m) + " uses a token outside the vocabulary");
    // A repeated pair takes the later rank, as HF's merge map does.
    merges[pair_key(l->second, rr->second)] = MergeInfo{static_cast<std::int32_t>(r), merged->second};
  }

  spec.merges = {};  // now in the merge map; the strings are dead weight (~1.5 MB for SmolLM2)

  token_bytes.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    // Map back through the byte alphabet; a token with any character outside it (an added token
    // written as plain text) is emitted as its own UTF-8, like HF's ByteLevel decoder.
    const std::string& t = spec.tokens[i];
    std::string bytes;
    bool in_alphabet = true;
    for (std::size_t k = 0; k < t.size() && in_alphabet;) {
      const int b = alphabet.byte_of(detail::utf8_next(t, k));
      if (b < 0) {
        in_alphabet = false;
      } else {
        bytes += static_cast<char>(b);
      }
    }
    token_bytes[i] = in_alphabet ? std::move(bytes) : t;

    const std::int32_t type = spec.token_types[i];
    if ((type == kTypeControl || type == kTypeUserDefined) && !t.empty()) {
      added_by_first[static_cast<unsigned char>(t[0])].push_back(
          AddedToken{t, static_cast<TokenId>(i), type == kTypeControl});
    }
  }
  for (auto& list : added_by_first) {
    std::stable_sort(list.begin(), list.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.text.size() > b.text.size(); });
  }

  if (spec.chat_template.empty()) {
    chat_error = "the model has no chat template";
  } else {
    try {
      detail::ChatTemplate::SpecialTokens names;
      auto text_of = [&](TokenId id) {
        return id >= 0 ? spec.tokens[static_cast<std::size_t>(id)] : std::string();
      };
      names.bos = text_of(spec.bos);
      names.eos = text_of(spec.eos);
      chat.emplace(spec.chat_template, std::move(names));
    } catch (const Error& e) {
      chat_error = e.what();
    }
  }
}

// HF's BPE word merge: a min-heap of candidate pairs ordered by (rank, position); entries made
// stale by an earlier merge are skipped when popped.
void Tokenizer::Impl::bpe(std::string_view word, std::vector<TokenId>& out) const {
  if (word.size() == 1) {
    if (const TokenId id = byte_token[static_cast<unsigned char>(word[0])]; id >= 0) out.push_back(id);
    return;
  }
  if (ignore_merges) {
    std::string mapped;
    for (const char c : word) mapped += detail::byte_alphabet().byte_to_utf8[static_cast<unsigned char>(c)];
    if (const auto it = token_to_id.find(mapped); it != token_to_id.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Sym {
    TokenId id;
    int prev;
    int next;
    bool dead;
  };
  struct Cand {
    std::int32_t rank;
    int pos;
    TokenId merged;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  for (const char c : word) {
    // Bytes without a token are left out, so their neighbours can merge (as in HF).
    if (const TokenId id = byte_token[static_cast<unsigned char>(c)]; id >= 0) {
      syms.push_back(Sym{id, static_cast<int>(syms.size()) - 1, static_cast<int>(syms.size()) + 1, false});
    }
  }
  if (syms.empty()) return;
  syms.back().next = -1;
  const int n = static_cast<int>(syms.size());
  const auto later = [](const Cand& a, const Cand& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<Cand> heap;
  heap.reserve(static_cast<std::size_t>(n));
  const auto lookup = [&](int pos) -> const MergeInfo* {
    const Sym& s = syms[static_cast<std::size_t>(pos)];
    if (s.next < 0) return nullptr;
    const auto it = merges.find(pair_key(s.id, syms[static_cast<std::size_t>(s.next)].id));
    return it == merges.end() ? nullptr : &it->second;
  };
  const auto push = [&](int pos) {
    if (const MergeInfo* m = lookup(pos)) {
      heap.push_back(Cand{m->rank, pos, m->merged});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Cand top = heap.back();
    heap.pop_back();
    Sym& s = syms[static_cast<std::size_t>(top.pos)];
    if (s.dead) continue;
    const MergeInfo* m = lookup(top.pos);
    if (m == nullptr || m->merged != top.merged) continue;
    Sym& right = syms[static_cast<std::size_t>(s.next)];
    right.dead = true;
    s.id = top.merged;
    s.next = right.next;
    if (s.next >= 0) syms[static_cast<std::size_t>(s.next)].prev = top.pos;
    if (s.prev >= 0) push(s.prev);
    push(top.pos);
  }
  for (int i = 0; i >= 0; i = syms[static_cast<std::size_t>(i)].next) {
    out.push_back(syms[static_cast<std::size_t>(i)].id);
  }
}

void Tokenizer::Impl::encode_plain(std::string_view text, std::vector<TokenId>& out) const {
  if (text.empty()) return;
  detail::PreTokenizer pretok(pre);
  detail::Pieces pieces;
  pretok.split(text, pieces);
  std::vector<TokenId> ids;
  for (const auto& [b, e] : pieces) {
    const std::string_view piece = text.substr(b, e - b);
    {
      const std::lock_guard lock(cache_mutex);
      if (const auto it = cache.find(piece); it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        continue;
      }
    }
    ids.clear();
    bpe(piece, ids);
    out.insert(out.end(), ids.begin(), ids.end());
    const std::lock_guard lock(cache_mutex);
    if (cache.size() >= kCacheLimit) cache.clear();  // crude bound; refills with what is current
    cache.emplace(std::string(piece), ids);
  }
}

Tokenizer::Tokenizer(TokenizerSpec spec) : impl_(std::make_unique<Impl>(std::move(spec))) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool parse_special) const {
  const Impl& im = *impl_;
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + 2);
  if (im.spec.add_bos) out.push_back(im.spec.bos);
  std::size_t pos = 0;
  std::size_t scan = 0;
  while (scan < text.size()) {
    // Leftmost-longest match of an added token; control tokens only when parse_special.
    const AddedToken* hit = nullptr;
    for (const AddedToken& t : im.added_by_first[static_cast<unsigned char>(text[scan])]) {
      if ((parse_special || !t.control) && text.substr(scan, t.text.size()) == t.text) {
        hit = &t;
        break;
      }
    }
    if (hit == nullptr) {
      ++scan;
      continue;
    }
    im.encode_plain(text.substr(pos, scan - pos), out);
    out.push_back(hit->id);
    scan += hit->text.size();
    pos = scan;
  }
  im.encode_plain(text.substr(pos), out);
  return out;
}

std::string Tokenizer::decode(std::span<const TokenId> ids, bool skip_special) const {
  const Impl& im = *impl_;
  std::string out;
  for (const TokenId id : ids) {
    if (id < 0 || static_cast<std::size_t>(id) >= im.token_bytes.size()) {
      throw Error(ErrorCode::kTokenOutOfRange, "token id " + std::to_string(id) +
                                                   " outside the vocabulary of " +
                                                   std::to_string(im.token_bytes.size()));
    }
    if (skip_special && im.is_type(id, kTypeControl)) continue;
    out += im.token_bytes[static_cast<std::size_t>(id)];
  }
  return out;
}

int Tokenizer::vocab_size() const {
  return static_cast<int>(impl_->spec.tokens.size());
}
TokenId Tokenizer::bos() const {
  return impl_->spec.bos;
}
TokenId Tokenizer::eos() const {
  return impl_->spec.eos;
}
bool Tokenizer::is_special(TokenId id) const {
  return impl_->is_type(id, kTypeControl);
}

TokenId Tokenizer::find(std::string_view token) const {
  const auto it = impl_->token_to_id.find(token);
  return it == impl_->token_to_id.end() ? -1 : it->second;
}

std::string Tokenizer::apply_chat_template(std::span<const ChatMessage> messages,
                                           bool add_generation_prompt) const {
  if (!impl_->chat) throw Error(ErrorCode::kUnsupported, "chat template: " + impl_->chat_error);
  // transformers refuses an empty conversation too.
  check(!messages.empty(), ErrorCode::kInvalidArgument, "chat template: no messages");
  return impl_->chat->render(messages, add_generation_prompt);
}

// ---- tokenizer.json ---------------------------------------------------------------------------

namespace {

using nlohmann::json;

// The regexes of HF Split pre-tokenizers we implement, as they appear in tokenizer.json.
constexpr std::string_view kLlama3Regex =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr std::string_view kQwen2Regex =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

[[noreturn]] void json_fail(const std::string& what) {
  throw Error(ErrorCode::kTokenizer, "tokenizer.json: " + what);
}

std::string brief(const json& j) {
  std::string s = j.dump();
  return s.size() <= 160 ? s : s.substr(0, 160) + "...";
}

bool is_byte_level(const json& j, bool use_regex) {
  // add_prefix_space defaults to true in HF; we only reproduce false.
  return j.is_object() && j.value("type", "") == "ByteLevel" && !j.value("add_prefix_space", true) &&
         j.value("use_regex", true) == use_regex;
}

// Names the pre-tokenizer the way llama.cpp does; throws for anything we do not reproduce.
std::string infer_pre(const json& pre) {
  if (is_byte_level(pre, true)) return "gpt2";
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers")) {
    const json& seq = pre["pretokenizers"];
    if (seq.is_array() && seq.size() == 2) {
      const json& a = seq[0];
      if (a.value("type", "") == "Digits" && a.value("individual_digits", false) &&
          is_byte_level(seq[1], true)) {
        return "smollm";
      }
      if (a.value("type", "") == "Split" && a.value("behavior", "") == "Isolated" &&
          !a.value("invert", false) && a.contains("pattern") && a["pattern"].is_object() &&
          a["pattern"].contains("Regex") && is_byte_level(seq[1], false)) {
        const std::string re = a["pattern"]["Regex"].get<std::string>();
        if (re == kLlama3Regex) return "llama-bpe";
        if (re == kQwen2Regex) return "qwen2";
      }
    }
  }
  json_fail("unsupported pre_tokenizer " + brief(pre) +
            " (supported: ByteLevel; Digits(individual)+ByteLevel; Llama 3 or Qwen2 Split+ByteLevel)");
}

std::string token_content(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string())
    return j["content"].get<std::string>();
  return {};
}

json read_json(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, "cannot open " + p.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kTokenizer, p.string() + ": " + e.what());
  }
}

}  // namespace

TokenizerSpec Tokenizer::spec_from_json(const std::filesystem::path& tokenizer_json) {
  const json root = read_json(tokenizer_json);
  TokenizerSpec spec;
  try {
    check(root.is_object() && root.contains("model"), ErrorCode::kTokenizer,
          "tokenizer.json: no 'model' in " + tokenizer_json.string());
    const json& model = root["model"];
    if (model.value("type", "BPE") != "BPE")
      json_fail("model type '" + model.value("type", "") + "' is not BPE");
    if (model.value("byte_fallback", false)) json_fail("byte_fallback BPE is not supported");
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
        json_fail(std::string(key) + " is not supported");
      }
    }
    if (root.contains("normalizer") && !root["normalizer"].is_null()) {
      json_fail("normalizer " + brief(root["normalizer"]) + " is not supported");
    }
    if (root.contains("decoder") && !root["decoder"].is_null() &&
        root["decoder"].value("type", "") != "ByteLevel") {
      json_fail("decoder " + brief(root["decoder"]) + " is not supported (expected ByteLevel)");
    }
    spec.model = "gpt2";
    spec.pre = infer_pre(root.value("pre_tokenizer", json()));
    // We tie ignore_merges to the Llama 3 pre-tokenizer, as llama.cpp does.
    if (model.value("ignore_merges", false) != (spec.pre == "llama-bpe")) {
      json_fail("ignore_merges=" + std::string(model.value("ignore_merges", false) ? "true" : "false") +
                " with pre-tokenizer " + spec.pre + " is not supported");
    }

    const json& vocab = model.at("vocab");
    if (!vocab.is_object()) json_fail("model.vocab is not an object");
    std::vector<std::pair<std::int64_t, std::string>> entries;
    entries.reserve(vocab.size());
    for (const auto& [text, id] : vocab.items()) entries.emplace_back(id.get<std::int64_t>(), text);
    std::vector<std::pair<std::int64_t, std::pair<std::string, bool>>> added;
    if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
      for (const json& t : root["added_tokens"]) {
        added.emplace_back(t.at("id").get<std::int64_t>(),
                           std::make_pair(t.at("content").get<std::string>(), t.value("special", false)));
      }
    }
    std::int64_t max_id = -1;
    for (const auto& e : entries) max_id = std::max(max_id, e.first);
    for (const auto& a : added) max_id = std::max(max_id, a.first);
    if (max_id < 0 || max_id >= (std::int64_t{1} << 31)) json_fail("vocabulary empty or ids out of range");
    const auto n = static_cast<std::size_t>(max_id + 1);
    spec.tokens.assign(n, std::string());
    spec.token_types.assign(n, 0);
    for (const auto& [id, text] : entries) {
      if (id < 0) json_fail("negative token id");
      spec.tokens[static_cast<std::size_t>(id)] = text;
      spec.token_types[static_cast<std::size_t>(id)] = 1;
    }
    for (const auto& [id, tok] : added) {
      if (id < 0) json_fail("negative token id");
      spec.tokens[static_cast<std::size_t>(id)] = tok.first;
      spec.token_types[static_cast<std::size_t>(id)] = tok.second ? kTypeControl : kTypeUserDefined;
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (spec.token_types[i] == 0) json_fail("no token has id " + std::to_string(i));
    }

    const json& merges = model.value("merges", json::array());
    spec.merges.reserve(merges.size());
    for (const json& m : merges) {
      if (m.is_string()) {
        spec.merges.push_back(m.get<std::string>());
      } else if (m.is_array() && m.size() == 2) {
        const auto a = m[0].get<std::string>();
        const auto b = m[1].get<std::string>();
        // The spec keeps llama.cpp's "left right" form, which cannot hold a space inside a part.
        if (a.find(' ') != std::string::npos || b.find(' ') != std::string::npos) {
          json_fail("merge part with a space: " + brief(m));
        }
        spec.merges.push_back(a + " " + b);
      } else {
        json_fail("malformed merge " + brief(m));
      }
    }
  } catch (const json::exception& e) {
    json_fail(e.what());
  }

  const auto id_of = [&](const std::string& text) -> std::int32_t {
    if (text.empty()) return -1;
    const auto it = std::find(spec.tokens.begin(), spec.tokens.end(), text);
    return it == spec.tokens.end() ? -1 : static_cast<std::int32_t>(it - spec.tokens.begin());
  };

  // BOS is also visible in a TemplateProcessing post-processor that prepends it.
  if (root.contains("post_processor") && root["post_processor"].is_object() &&
      root["post_processor"].value("type", "") == "TemplateProcessing") {
    const json& single = root["post_processor"].value("single", json::array());
    if (single.is_array() && !single.empty() && single[0].contains("SpecialToken")) {
      spec.bos = id_of(single[0]["SpecialToken"].value("id", ""));
      spec.add_bos = spec.bos >= 0;
    }
  }

  // The rest (bos/eos/pad/unk, chat template) lives in tokenizer_config.json beside it:
  // "<stem>_config.json", so tokenizer.json -> tokenizer_config.json.
  const auto dir = tokenizer_json.parent_path();
  const auto config_path = dir / (tokenizer_json.stem().string() + "_config.json");
  if (std::filesystem::exists(config_path)) {
    const json cfg = read_json(config_path);
    try {
      if (cfg.contains("bos_token")) spec.bos = id_of(token_content(cfg["bos_token"]));
      if (cfg.contains("eos_token")) spec.eos = id_of(token_content(cfg["eos_token"]));
      if (cfg.contains("pad_token")) spec.pad = id_of(token_content(cfg["pad_token"]));
      if (cfg.contains("unk_token")) spec.unk = id_of(token_content(cfg["unk_token"]));
      if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) {
        spec.add_bos = cfg["add_bos_token"].get<bool>() && spec.bos >= 0;
      }
      if (cfg.contains("chat_template") && cfg["chat_template"].is_string()) {
        spec.chat_template = cfg["chat_template"].get<std::string>();
      }
    } catch (const json::exception& e) {
      throw Error(ErrorCode::kTokenizer, config_path.string() + ": " + e.what());
    }
  }
  // transformers >= 4.43 may save the template on its own.
  if (spec.chat_template.empty() && std::filesystem::exists(dir / "chat_template.jinja")) {
    std::ifstream in(dir / "chat_template.jinja", std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    spec.chat_template = ss.str();
  }
  return spec;
}

}  // namespace chunkwise
