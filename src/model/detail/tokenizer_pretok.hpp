// Pre-tokenizers of the byte-level BPE family, written out by hand because the standard
// library's regex has no \p{L}/\p{N}. Each reproduces, piece for piece, what Hugging Face
// tokenizers (Oniguruma) produces for the regex named in its comment.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "tokenizer_unicode.hpp"

namespace chunkwise::detail {

enum class PreKind {
  // ByteLevel(use_regex=true): 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]: every numeric code point
  // is its own piece, then the GPT-2 regex runs on each stretch between them (SmolLM, StarCoder).
  kDigitsGpt2,
  // Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  //          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
  // Qwen2: the Llama 3 regex with \p{N} instead of \p{N}{1,3}.
  kQwen2,
};

// Maps llama.cpp's tokenizer.ggml.pre names onto the pre-tokenizers above; nullopt if unknown.
inline std::optional<PreKind> pre_kind_from_name(std::string_view name) {
  if (name == "default" || name == "gpt2" || name == "gpt-2") return PreKind::kGpt2;
  if (name == "smollm" || name == "starcoder" || name == "refact" || name == "codeshell") {
    return PreKind::kDigitsGpt2;
  }
  if (name == "llama-bpe" || name == "llama3" || name == "llama-v3") return PreKind::kLlama3;
  if (name == "qwen2") return PreKind::kQwen2;
  return std::nullopt;
}

// Byte ranges [first, second) of the pieces of a text, in order and covering all of it.
using Pieces = std::vector<std::pair<std::size_t, std::size_t>>;

class PreTokenizer {
 public:
  explicit PreTokenizer(PreKind kind) : kind_(kind) {}

  // Appends the pieces of text to out, with offsets shifted by base.
  void split(std::string_view text, Pieces& out, std::size_t base = 0) {
    decode(text);
    const std::size_t n = cps_.size();
    if (kind_ == PreKind::kDigitsGpt2) {
      std::size_t start = 0;
      for (std::size_t i = 0; i < n; ++i) {
        if (!is_digits_numeric(cps_[i], cls_[i])) continue;
        if (start < i) split_range(start, i, out, base);
        emit(i, i + 1, out, base);
        start = i + 1;
      }
      if (start < n) split_range(start, n, out, base);
    } else {
      split_range(0, n, out, base);
    }
  }

 private:
  void decode(std::string_view text) {
    cps_.clear();
    cls_.clear();
    off_.clear();
    std::size_t i = 0;
    while (i < text.size()) {
      off_.push_back(i);
      const std::uint32_t cp = utf8_next(text, i);
      cps_.push_back(cp);
      cls_.push_back(cp_class(cp));
    }
    off_.push_back(text.size());
  }

  void emit(std::size_t b, std::size_t e, Pieces& out, std::size_t base) const {
    out.emplace_back(base + off_[b], base + off_[e]);
  }

  // Runs the regex over code points [b, e) as if they were the whole string (a lookahead sees the
  // end of the stretch as the end of the text, as it does in HF's per-split regex).
  void split_range(std::size_t b, std::size_t e, Pieces& out, std::size_t base) const {
    std::size_t i = b;
    while (i < e) {
      const std::size_t len =
          kind_ == PreKind::kLlama3 || kind_ == PreKind::kQwen2 ? match_llama3(i, e) : match_gpt2(i, e);
      emit(i, i + len, out, base);
      i += len;
    }
  }

  [[nodiscard]] std::size_t run(std::size_t i, std::size_t e, CpClass c) const {
    std::size_t k = i;
    while (k < e && cls_[k] == c) ++k;
    return k;
  }

  // \s+(?!\S)|\s+ at a space: the whole run at the end of the text, else all but its last code
  // point (which then leads the next piece), else the single code point.
  [[nodiscard]] std::size_t match_spaces(std::size_t i, std::size_t e) const {
    const std::size_t k = run(i, e, kSpace);
    if (k == e) return k - i;
    return k - i >= 2 ? k - i - 1 : 1;
  }

  [[nodiscard]] std::size_t match_gpt2(std::size_t i, std::size_t e) const {
    if (cps_[i] == '\'' && i + 1 < e) {
      const std::uint32_t c1 = cps_[i + 1];
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
      if (i + 2 < e) {
        const std::uint32_t c2 = cps_[i + 2];
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
      }
    }
    // ` ?X+` for X in letters, numbers, other: the optional space is U+0020 only.
    const std::size_t j = cps_[i] == ' ' && i + 1 < e && cls_[i + 1] != kSpace ? i + 1 : i;
    if (cls_[j] != kSpace) return run(j, e, cls_[j]) - i;
    return match_spaces(i, e);
  }

  // Case-insensitive ASCII, plus U+017F (long s), which Oniguruma's (?i) folds onto 's'.
  static std::uint32_t fold(std::uint32_t c) noexcept {
    if (c >= 'A' && c <= 'Z') return c + ('a' - 'A');
    return c == 0x17F ? 's' : c;
  }

  [[nodiscard]] std::size_t match_llama3(std::size_t i, std::size_t e) const {
    const std::uint32_t c0 = cps_[i];
    if (c0 == '\'' && i + 1 < e) {
      const std::uint32_t c1 = fold(cps_[i + 1]);
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
      if (i + 2 < e) {
        const std::uint32_t c2 = fold(cps_[i + 2]);
        if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
      }
    }
    const CpClass k0 = cls_[i];
    const bool newline = c0 == '\r' || c0 == '\n';
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (k0 == kLetter) return run(i, e, kLetter) - i;
    if (k0 != kNumber && !newline && i + 1 < e && cls_[i + 1] == kLetter) return run(i + 1, e, kLetter) - i;
    // \p{N}{1,3} (Qwen2: \p{N})
    if (k0 == kNumber) {
      const std::size_t max = kind_ == PreKind::kLlama3 ? 3 : 1;
      std::size_t k = i + 1;
      while (k < e && k - i < max && cls_[k] == kNumber) ++k;
      return k - i;
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    const std::size_t j = c0 == ' ' && i + 1 < e && cls_[i + 1] == kOther ? i + 1 : i;
    if (cls_[j] == kOther) {
      std::size_t k = run(j, e, kOther);
      while (k < e && (cps_[k] == '\r' || cps_[k] == '\n')) ++k;
      return k - i;
    }
    // \s*[\r\n]+: up to the last newline of the whitespace run.
    const std::size_t k = run(i, e, kSpace);
    for (std::size_t p = k; p > i; --p) {
      if (cps_[p - 1] == '\r' || cps_[p - 1] == '\n') return p - i;
    }
    return match_spaces(i, e);
  }

  PreKind kind_;
  std::vector<std::uint32_t> cps_;
  std::vector<CpClass> cls_;
  std::vector<std::size_t> off_;  // byte offset of each code point, plus the end
};

}  // namespace chunkwise::detail
