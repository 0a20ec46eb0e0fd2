// UTF-8 and code point helpers for the byte-level BPE tokenizer: code point classes for the
// pre-tokenizer regexes and GPT-2's byte <-> unicode alphabet.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "unicode_tables.hpp"

namespace chunkwise::detail {

enum CpClass : std::uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

// Bytes that are not valid UTF-8 decode to kInvalidBase + byte: a code point no class claims, so
// they pre-tokenize as punctuation-like "other" and still round-trip byte for byte.
inline constexpr std::uint32_t kInvalidBase = 0x110000;

inline CpClass cp_class(std::uint32_t cp) noexcept {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return kLetter;
    if (cp >= '0' && cp <= '9') return kNumber;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return kSpace;
    return kOther;
  }
  const auto* end = std::end(kCpRanges);
  const auto* it = std::upper_bound(std::begin(kCpRanges), end, cp,
                                    [](std::uint32_t c, const CpRange& r) { return c < r.lo; });
  if (it == std::begin(kCpRanges)) return kOther;
  --it;
  return cp <= it->hi ? static_cast<CpClass>(it->cls) : kOther;
}

// Hugging Face's Digits pre-tokenizer tests Rust's char::is_numeric, a slightly newer \p{N}.
inline bool is_digits_numeric(std::uint32_t cp, CpClass cls) noexcept {
  if (cls == kNumber) return true;
  if (cp < 0x11000) return false;
  for (const auto& r : kExtraNumeric) {
    if (cp >= r.lo && cp <= r.hi) return true;
  }
  return false;
}

// Decodes one code point at s[i] and advances i; strict (no overlongs, surrogates or values past
// U+10FFFF). An invalid byte yields kInvalidBase + byte and advances by one.
inline std::uint32_t utf8_next(std::string_view s, std::size_t& i) noexcept {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  int len = 0;
  std::uint32_t cp = 0;
  std::uint32_t min = 0;
  if ((b0 & 0xE0) == 0xC0) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  }
  if (len == 0 || i + static_cast<std::size_t>(len) > s.size()) {
    ++i;
    return kInvalidBase + b0;
  }
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
    if ((b & 0xC0) != 0x80) {
      ++i;
      return kInvalidBase + b0;
    }
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    ++i;
    return kInvalidBase + b0;
  }
  i += static_cast<std::size_t>(len);
  return cp;
}

inline void utf8_append(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes
// take code points 256.. in byte order, so every token is printable text.
struct ByteAlphabet {
  std::array<std::uint32_t, 256> byte_to_cp{};
  std::array<std::string, 256> byte_to_utf8;
  std::array<std::int16_t, 324> cp_to_byte{};  // -1: not in the alphabet

  ByteAlphabet() {
    cp_to_byte.fill(-1);
    std::uint32_t next = 256;
    for (std::uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const std::uint32_t cp = printable ? b : next++;
      byte_to_cp[b] = cp;
      cp_to_byte[cp] = static_cast<std::int16_t>(b);
      utf8_append(byte_to_utf8[b], cp);
    }
  }

  // Byte a code point of the alphabet stands for, or -1.
  [[nodiscard]] int byte_of(std::uint32_t cp) const noexcept {
    return cp < cp_to_byte.size() ? cp_to_byte[cp] : -1;
  }
};

inline const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet;
  return alphabet;
}

}  // namespace chunkwise::detail
