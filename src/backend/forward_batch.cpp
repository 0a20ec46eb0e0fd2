// Checks a forward batch's metadata before any backend touches memory with it.
#include "chunkwise/backend/forward_batch.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/core/error.hpp"

namespace chunkwise {
namespace {

[[noreturn]] void bad(const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, "forward batch: " + what);
}

// The SelectiveRecompute contract (selective_recompute.hpp) that does not need the model.
void validate_recompute(const SelectiveRecompute& r, const ForwardBatch& b) {
  if (b.sparse != nullptr) bad("selective recompute cannot be combined with sparse attention");
  if (b.num_seqs() != 1) bad("selective recompute needs a batch of exactly one sequence");
  if (r.check_layer < 0) bad("selective recompute: check_layer must be >= 0");
  if (r.min_tokens < 0) bad("selective recompute: min_tokens must be >= 0");
  for (std::size_t s = 0; s < r.gradual.size(); ++s) {
    const double g = r.gradual[s];
    // !(g >= 1) also refuses NaN.
    if (!(g >= 1.0) || !std::isfinite(g) || (s > 0 && g > r.gradual[s - 1]))
      bad("selective recompute: gradual multiples must be finite, >= 1 and not increasing");
  }
  const auto rows = static_cast<std::int32_t>(b.rows());
  // Chunks and always ranges must tile the rows exactly: sorted by begin, each starts where the
  // previous ended. always[i] is tagged -1 - i to tell it from chunk i in the messages.
  struct Range {
    std::int32_t begin, end, tag;
  };
  std::vector<Range> ranges;
  for (std::size_t i = 0; i < r.chunks.size(); ++i) {
    const auto& c = r.chunks[i];
    if (!(c.ratio >= 0.0 && c.ratio <= 1.0))
      bad("selective recompute: chunk " + std::to_string(i) + " has a ratio outside [0, 1]");
    ranges.push_back({c.begin, c.end, static_cast<std::int32_t>(i)});
  }
  for (std::size_t i = 0; i < r.always.size(); ++i)
    ranges.push_back({r.always[i].begin, r.always[i].end, -1 - static_cast<std::int32_t>(i)});
  auto name = [](const Range& x) {
    return x.tag >= 0 ? "chunk " + std::to_string(x.tag) : "always range " + std::to_string(-1 - x.tag);
  };
  for (const auto& x : ranges)
    if (!(0 <= x.begin && x.begin < x.end && x.end <= rows))
      bad("selective recompute: " + name(x) + " [" + std::to_string(x.begin) + ", " + std::to_string(x.end) +
          ") is empty or outside the batch's " + std::to_string(rows) + " rows");
  std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) { return x.begin < y.begin; });
  std::int32_t next = 0;
  for (const auto& x : ranges) {
    if (x.begin < next) bad("selective recompute: " + name(x) + " overlaps another range");
    if (x.begin > next)
      bad("selective recompute: rows [" + std::to_string(next) + ", " + std::to_string(x.begin) +
          ") are in no chunk and not always recomputed");
    next = x.end;
  }
  if (next != rows)
    bad("selective recompute: rows [" + std::to_string(next) + ", " + std::to_string(rows) +
        ") are in no chunk and not always recomputed");
  for (const auto row : b.logit_rows) {
    const bool always = std::any_of(r.always.begin(), r.always.end(), [&](const SelectiveRecompute::Rows& a) {
      return a.begin <= row && row < a.end;
    });
    if (!always) bad("selective recompute: logit row " + std::to_string(row) + " is not an always row");
  }
}

}  // namespace

void validate(const ForwardBatch& b, std::size_t logits_size, int vocab, int num_blocks, int block_size) {
  const auto rows = b.rows();
  const auto seqs = b.num_seqs();
  if (static_cast<std::int64_t>(b.positions.size()) != rows ||
      static_cast<std::int64_t>(b.slots.size()) != rows)
    bad("positions and slots must have one entry per token");
  if (static_cast<std::int64_t>(b.query_start.size()) != seqs + 1 ||
      static_cast<std::int64_t>(b.page_start.size()) != seqs + 1)
    bad("query_start and page_start must have num_seqs + 1 entries");
  if (b.query_start.front() != 0 || b.query_start.back() != rows) bad("query_start must span all rows");
  if (b.page_start.front() != 0 || b.page_start.back() != static_cast<std::int32_t>(b.pages.size()))
    bad("page_start must span all pages");
  for (std::int64_t s = 0; s < seqs; ++s) {
    const auto n_pages = b.page_start[s + 1] - b.page_start[s];
    if (b.query_start[s + 1] < b.query_start[s] || n_pages < 0) bad("CSR offsets must not decrease");
    if (b.kv_len[s] < 0 ||
        static_cast<std::int64_t>(b.kv_len[s]) > static_cast<std::int64_t>(n_pages) * block_size)
      bad("kv_len of sequence " + std::to_string(s) + " exceeds its pages");
    for (std::int32_t r = b.query_start[s]; r < b.query_start[s + 1]; ++r)
      if (b.positions[r] < 0 || b.positions[r] >= b.kv_len[s])
        bad("query position outside its sequence's cache");
  }
  for (auto p : b.pages)
    if (p < 0 || p >= num_blocks) bad("page " + std::to_string(p) + " outside the KV pool");
  const std::int64_t max_slot = static_cast<std::int64_t>(num_blocks) * block_size;
  for (auto s : b.slots)
    if (s < 0 || s >= max_slot) bad("cache slot outside the KV pool");
  for (auto r : b.logit_rows)
    if (r < 0 || r >= rows) bad("logit row out of range");
  if (logits_size < b.logit_rows.size() * static_cast<std::size_t>(vocab)) bad("logits buffer too small");
  if (b.recompute != nullptr) validate_recompute(*b.recompute, b);
}

}  // namespace chunkwise
