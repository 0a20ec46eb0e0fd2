// The roles of a prompt's segments, for prompts given in parts (a RAG prompt: a system prefix,
// retrieved chunks, the question). Requests carry them (Request::segments) and the reuse policies
// read them (PromptLayout).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace chunkwise {

enum class SegmentKind : std::uint8_t {
  kPrefix,    // a system prompt: served by the prefix cache or computed normally, never loaded
  kChunk,     // a retrieved passage: its KV may come from the chunk store
  kQuestion,  // the query suffix: always computed normally (its last row gives the logits)
};

constexpr std::string_view to_string(SegmentKind k) noexcept {
  switch (k) {
    case SegmentKind::kPrefix:
      return "prefix";
    case SegmentKind::kChunk:
      return "chunk";
    case SegmentKind::kQuestion:
      return "question";
  }
  return "unknown";
}

// The kind named "prefix", "chunk" or "question"; nullopt for anything else.
constexpr std::optional<SegmentKind> segment_kind(std::string_view name) noexcept {
  for (const SegmentKind k : {SegmentKind::kPrefix, SegmentKind::kChunk, SegmentKind::kQuestion})
    if (to_string(k) == name) return k;
  return std::nullopt;
}

}  // namespace chunkwise
