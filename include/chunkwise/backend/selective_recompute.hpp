// Selective KV recompute: the backend half of chunk reuse (CacheBlend in LMCache's production form,
// METHODS 2.6; Cache-Craft's adaptive per-chunk ratio, 2.7). A prompt
// [system][chunk 1]...[chunk m][question] whose chunks' KV were computed standalone and written into
// the sequence's cache at their new positions (CpuBackend::write_chunk_kv) runs as ONE prefill
// sequence with ForwardBatch::recompute set:
//   - layers 0 .. check_layer compute every row afresh and overwrite the loaded K/V: the first
//     layers are cheap to redo and the check layer needs every row's fresh K;
//   - at check_layer, before its cache is overwritten, each chunk row j gets the deviation
//     d_j = sum over dims of (K_new[j] - K_old[j])^2 on post-RoPE keys (K_old: the loaded,
//     re-rotated key). The rows whose loaded KV is most wrong are those that attend most to what
//     the chunk did not see when it was computed alone;
//   - per chunk the ceil(ratio * rows) rows of highest deviation are selected (raised evenly until
//     min_tokens chunk rows are, see recompute_quotas), plus every `always` row;
//   - layers after check_layer run only the selected rows: their fresh K/V overwrite the cache at
//     their slots, every other position keeps the loaded K/V, and the selected queries attend to all
//     keys of the sequence, causally by position.
// Every chunk at ratio 1 is a full prefill (bitwise the same logits); ratio 0 everywhere with
// min_tokens 0 reuses all chunk KV from layer check_layer + 1 on.
//
// Gradual filtering (the CacheBlend paper's, where its prototype and LMCache check once): with
// gradual = {g_0, ..., g_{G-1}}, the selection above happens at layers check_layer, ...,
// check_layer + G, each among the rows the previous one kept: at check_layer + s (s < G) each chunk
// keeps ceil(min(1, g_s * ratio) * rows) of its rows, at check_layer + G its final ceil(ratio * rows)
// (min_tokens raising every stage alike). A row whose deviation is small at one layer is unlikely to
// be large at the next (the paper's observation), so later stages choose among fewer candidates with
// a deviation measured deeper in the model.
//
// Contract (validate(ForwardBatch) throws Error(kInvalidArgument) otherwise): the batch holds one
// sequence; every row lies in exactly one chunk or one always range (a row outside every chunk has
// no loaded KV, so it must be recomputed); ranges are non-empty; ratios are in [0, 1];
// min_tokens >= 0; 0 <= check_layer < n_layers (checked by the backend, which knows the model);
// logit rows are always rows (the rows past check_layer are a subset the backend chooses); gradual
// multiples are finite, >= 1 and do not increase; and `sparse` is not set too (one batch is either
// sparse or selective). The backend checks check_layer + gradual.size() < n_layers.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

namespace chunkwise {

// What a selective forward did, for the reuse policy's statistics and the quality report.
struct SelectiveRecomputeReport {
  std::vector<std::int32_t> rows;      // batch rows recomputed in the layers after check_layer, ascending
  std::vector<float> row_deviation;    // [batch rows]: d_j at check_layer; 0 for always rows
  std::vector<float> chunk_deviation;  // per chunk, in the order given: mean d_j over its rows
};

struct SelectiveRecompute {
  // A row range [begin, end) of the batch.
  struct Rows {
    std::int32_t begin = 0;
    std::int32_t end = 0;
  };
  // A reused chunk: its rows (KV already loaded at their slots) and the share of them to recompute.
  // CacheBlend gives every chunk the same ratio; an adaptive policy (Cache-Craft) gives each its own.
  struct Chunk {
    std::int32_t begin = 0;
    std::int32_t end = 0;
    double ratio = 0.15;
  };

  int check_layer = 1;        // CacheBlend and LMCache check at layer 1
  std::vector<Chunk> chunks;  // disjoint
  // Recomputed through every layer: a system prefix that was not reused, the question.
  std::vector<Rows> always;
  // At least min(min_tokens, chunk rows) chunk rows are recomputed (LMCache's blend_min_tokens): on a
  // short prompt a small ratio would leave too few rows to repair the KV.
  std::int32_t min_tokens = 256;
  // Gradual filtering: multiples of each chunk's ratio kept at the layers from check_layer on, before
  // the final ratio at check_layer + gradual.size() (see above). Empty: one selection.
  std::vector<double> gradual;
  SelectiveRecomputeReport* report = nullptr;  // filled by the forward when set

  // The layer of selection stage s (0 .. gradual.size()), and the last one.
  [[nodiscard]] int stage_layer(std::size_t s) const { return check_layer + static_cast<int>(s); }
  [[nodiscard]] int last_check_layer() const { return stage_layer(gradual.size()); }
  // The ratio chunk c keeps at stage s.
  [[nodiscard]] double stage_ratio(const Chunk& c, std::size_t s) const {
    return s < gradual.size() ? std::min(1.0, c.ratio * gradual[s]) : c.ratio;
  }
};

// ceil(ratio * n) in [0, n]. The guard keeps products such as 0.15 * 200 = 30.000000000000004 at 30.
inline std::int32_t recompute_share(double ratio, std::int32_t n) {
  const double rows = std::ceil(ratio * static_cast<double>(n) - 1e-9);
  return static_cast<std::int32_t>(std::clamp(rows, 0.0, static_cast<double>(n)));
}

// How many rows of each chunk are recomputed: recompute_share(ratio, rows of the chunk), and when
// that totals fewer than min(min_tokens, all chunk rows), every chunk's ratio raised by the same
// smallest amount delta (capped at 1) that reaches it. The result may pass the target by a few rows
// (one ceil per chunk).
// At stage s of a gradual filtering (default: the final one), with the stage's ratios.
inline std::vector<std::int32_t> recompute_quotas(const SelectiveRecompute& r, std::size_t stage) {
  auto quotas = [&](double delta) {
    std::vector<std::int32_t> q;
    q.reserve(r.chunks.size());
    for (const auto& c : r.chunks)
      q.push_back(recompute_share(std::min(1.0, r.stage_ratio(c, stage) + delta), c.end - c.begin));
    return q;
  };
  auto total = [](const std::vector<std::int32_t>& q) {
    return std::accumulate(q.begin(), q.end(), std::int64_t{0});
  };
  std::int64_t chunk_rows = 0;
  for (const auto& c : r.chunks) chunk_rows += c.end - c.begin;
  const std::int64_t target = std::min<std::int64_t>(r.min_tokens, chunk_rows);
  std::vector<std::int32_t> q = quotas(0.0);
  if (total(q) >= target) return q;
  // total(quotas(delta)) does not decrease with delta and reaches chunk_rows at delta = 1.
  double lo = 0.0, hi = 1.0;
  for (int i = 0; i < 64 && hi - lo > 1e-12; ++i) {
    const double mid = 0.5 * (lo + hi);
    (total(quotas(mid)) >= target ? hi : lo) = mid;
  }
  return quotas(hi);
}
inline std::vector<std::int32_t> recompute_quotas(const SelectiveRecompute& r) {
  return recompute_quotas(r, r.gradual.size());
}

// The rows a selective forward carries past selection stage `stage` (default: the final one),
// ascending: per chunk its quota of rows with the highest deviation (ties to the earlier row; a NaN
// deviation counts as the highest), then every always row. deviation has one entry per batch row;
// -inf marks a row an earlier stage dropped, which is never chosen (a chunk keeps at most the rows
// it still has).
inline std::vector<std::int32_t> select_recompute_rows(const SelectiveRecompute& r,
                                                       std::span<const float> deviation, std::size_t stage) {
  const std::vector<std::int32_t> quota = recompute_quotas(r, stage);
  constexpr float kDropped = -std::numeric_limits<float>::infinity();
  auto key = [&](std::int32_t j) {
    const float d = deviation[static_cast<std::size_t>(j)];
    return std::isnan(d) ? std::numeric_limits<float>::infinity() : d;
  };
  std::vector<std::int32_t> rows;
  std::vector<std::int32_t> candidates;
  for (std::size_t c = 0; c < r.chunks.size(); ++c) {
    candidates.clear();
    for (std::int32_t j = r.chunks[c].begin; j < r.chunks[c].end; ++j)
      if (deviation[static_cast<std::size_t>(j)] != kDropped) candidates.push_back(j);
    const auto k = static_cast<std::ptrdiff_t>(
        std::min<std::size_t>(static_cast<std::size_t>(quota[c]), candidates.size()));
    std::partial_sort(
        candidates.begin(), candidates.begin() + k, candidates.end(),
        [&](std::int32_t a, std::int32_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); });
    rows.insert(rows.end(), candidates.begin(), candidates.begin() + k);
  }
  for (const auto& a : r.always)
    for (std::int32_t j = a.begin; j < a.end; ++j) rows.push_back(j);
  std::sort(rows.begin(), rows.end());
  return rows;
}
inline std::vector<std::int32_t> select_recompute_rows(const SelectiveRecompute& r,
                                                       std::span<const float> deviation) {
  return select_recompute_rows(r, deviation, r.gradual.size());
}

// For backends: r.report from the check layer's deviation (one entry per batch row) and the rows
// select_recompute_rows() chose.
inline void fill_recompute_report(const SelectiveRecompute& r, std::vector<float> deviation,
                                  const std::vector<std::int32_t>& rows) {
  SelectiveRecomputeReport& out = *r.report;
  out.rows = rows;
  out.chunk_deviation.clear();
  for (const auto& c : r.chunks) {
    double sum = 0.0;
    for (std::int32_t j = c.begin; j < c.end; ++j) sum += deviation[static_cast<std::size_t>(j)];
    out.chunk_deviation.push_back(static_cast<float>(sum / (c.end - c.begin)));
  }
  out.row_deviation = std::move(deviation);
}

}  // namespace chunkwise
