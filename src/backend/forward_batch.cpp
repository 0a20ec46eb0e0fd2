// Checks a forward batch's metadata before any backend touches memory with it.
#include "chunkwise/backend/forward_batch.hpp"

#include <string>

#include "chunkwise/core/error.hpp"

namespace chunkwise {

void validate(const ForwardBatch& b, std::size_t logits_size, int vocab, int num_blocks, int block_size) {
  const auto rows = b.rows();
  const auto seqs = b.num_seqs();
  auto bad = [](const std::string& what) {
    throw Error(ErrorCode::kInvalidArgument, "forward batch: " + what);
  };
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
}

}  // namespace chunkwise
