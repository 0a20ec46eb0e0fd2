// The reuse family's view and plan. A reuse policy reads a PromptLayout (the prompt as segments: a
// system prefix, retrieved chunks, the question) and the ChunkStore's index, and returns a ReusePlan:
// which chunk segments load their KV from the store, and the recompute rule the backend applies to
// them (SelectiveRecompute, chunkwise/backend/selective_recompute.hpp; to_selective_recompute() in
// reuse_recompute.hpp turns a plan into one). No model, no KV bytes: plans are testable without either.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "chunkwise/core/segment_kind.hpp"
#include "chunkwise/core/types.hpp"
#include "chunkwise/kv/chunk_store.hpp"

namespace chunkwise {

// Segment i of a layout: its kind and its token range [begin, end) of the prompt.
struct PromptSegment {
  SegmentKind kind = SegmentKind::kChunk;
  std::int32_t begin = 0;
  std::int32_t end = 0;
  [[nodiscard]] std::int32_t size() const { return end - begin; }
};

// A prompt as a sequence of segments, for example [system][chunk 1]...[chunk m][question].
struct PromptLayout {
  std::vector<TokenId> tokens;
  std::vector<std::int32_t> chunk_starts;  // first token of each segment, strictly ascending, from 0
  std::vector<SegmentKind> kinds = {};     // the kind of each segment (one per entry of chunk_starts)

  // Appends a segment of the given kind (an empty one is ignored).
  void append(SegmentKind kind, std::span<const TokenId> segment_tokens);
  [[nodiscard]] std::int32_t size() const { return static_cast<std::int32_t>(tokens.size()); }
  [[nodiscard]] std::size_t num_segments() const { return chunk_starts.size(); }
  // Segment i; its kind is kChunk when kinds is shorter (a layout written before kinds existed).
  [[nodiscard]] PromptSegment segment(std::size_t i) const;
  [[nodiscard]] std::span<const TokenId> tokens_of(const PromptSegment& s) const {
    return std::span<const TokenId>(tokens).subspan(static_cast<std::size_t>(s.begin),
                                                    static_cast<std::size_t>(s.size()));
  }
  // Throws Error(kInvalidArgument) unless chunk_starts begins at 0 and ascends strictly inside the
  // prompt (both empty for an empty prompt) and kinds names every segment.
  void validate() const;
};

struct ReusePlan {
  // A row range [begin, end) of the prompt.
  struct Rows {
    std::int32_t begin = 0;
    std::int32_t end = 0;
  };
  // A chunk segment whose KV is loaded from the store under key, and the share of its rows the
  // backend recomputes (those whose loaded KV deviates most at check_layer; SelectiveRecompute).
  struct LoadSpan {
    std::int32_t begin = 0;
    std::int32_t end = 0;
    ChunkKey key;
    double ratio = 0.0;  // in [0, 1]; 1 recomputes every row (a full prefill, bit for bit)
  };

  std::vector<LoadSpan> load;  // ascending, disjoint, whole chunk segments
  // Every other row of the prompt, computed normally through every layer, ascending and merged: the
  // question, prefix segments (the rows the prefix cache serves fall before the forward's first row
  // and drop out in to_selective_recompute), and every chunk the plan does not load (not in the
  // store, or skipped by the policy). load and always tile [0, prompt length) exactly.
  std::vector<Rows> always;
  int check_layer = 1;            // layers 0..check_layer run every row; the deviation is measured here
  std::int32_t min_tokens = 256;  // at least min(min_tokens, loaded rows) loaded rows are recomputed
  // Gradual filtering: the multiples of each span's ratio kept at check_layer, check_layer + 1, ...
  // before the final selection (SelectiveRecompute::gradual); empty for one selection.
  std::vector<double> gradual;

  // False: nothing is loaded and the prompt is a plain prefill (PrefixOnlyReuse).
  [[nodiscard]] bool reuses() const { return !load.empty(); }
  // Throws Error(kInvalidArgument) unless load and always are non-empty ranges that tile [0, n) for
  // some n, ratios are in [0, 1], check_layer >= 0, min_tokens >= 0 and the gradual multiples are
  // finite, >= 1 and do not increase.
  void validate() const;
  // The n of validate(): the prompt length the plan covers.
  [[nodiscard]] std::int32_t rows() const;
};

// For policies (stock or user-written):
// The chunk segments of layout whose KV the store holds now (tier() != kNone, keyed by
// store.key_for(segment tokens)), in prompt order, each with ratio 0. Validates the layout. A later
// get() can still miss (a corrupt file, a collision); the session then computes that chunk normally.
[[nodiscard]] std::vector<ReusePlan::LoadSpan> stored_chunks(const PromptLayout& layout,
                                                             const ChunkStore& store);

// The plan that loads `load` (ascending, disjoint, inside the prompt) and computes every other row
// of layout normally. Throws Error(kInvalidArgument) for bad spans, ratios or parameters.
[[nodiscard]] ReusePlan make_reuse_plan(const PromptLayout& layout, std::vector<ReusePlan::LoadSpan> load,
                                        int check_layer, std::int32_t min_tokens,
                                        std::vector<double> gradual = {});

}  // namespace chunkwise
