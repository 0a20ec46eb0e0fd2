// Vertical-slash (MInference 1.0): the chunk's last 64 queries estimate which key columns
// (verticals) and which diagonals (slashes) carry the attention; each head keeps its top v columns
// and top s diagonals, sizes per head from a config file that `chunkwise tune-sparse` writes.
// Diagonal bands become the key tiles they touch; columns outside them are gathered one by one.
// The first 30 columns and the 100 diagonals nearest the main one are always kept (the official
// online kernel's rule).
#pragma once

#include <string>
#include <vector>

#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/sparse_fallback.hpp"

namespace chunkwise {

// Per-head sizes: vertical columns and slash diagonals, or dense for a head that keeps everything.
struct VerticalSlashSizes {
  int vertical = 1000;
  int slash = 6096;
  bool dense = false;
  friend bool operator==(const VerticalSlashSizes&, const VerticalSlashSizes&) = default;
};

// heads[layer][head]; layers or heads missing from it use default_sizes.
struct VerticalSlashConfig {
  VerticalSlashSizes default_sizes;
  std::vector<std::vector<VerticalSlashSizes>> heads;
  std::string model;  // the model it was tuned on (informational)

  [[nodiscard]] const VerticalSlashSizes& sizes(int layer, int head) const;
};

// JSON, format "chunkwise-vertical-slash/1": {"format", "model", "default": [v, s],
// "heads": [[[v, s] or "dense", ...per head], ...per layer]}. Throws Error(kInvalidArgument) with
// the path for an unreadable or malformed file.
VerticalSlashConfig load_vertical_slash_config(const std::string& path);
void save_vertical_slash_config(const VerticalSlashConfig& config, const std::string& path);

struct VerticalSlashAttentionParams {
  int tile = 64;
  int last_queries = 64;  // queries of the estimate
  int forced_columns = 30;
  int forced_diagonals = 100;
  VerticalSlashConfig config;
  SparseFallback fallback;
};

class VerticalSlashAttention : public detail::SparsePolicyBase<VerticalSlashAttentionParams> {
 public:
  using Params = VerticalSlashAttentionParams;
  VerticalSlashAttention() : VerticalSlashAttention(Params{}) {}
  explicit VerticalSlashAttention(Params params);
  [[nodiscard]] BlockMask select(const AttentionProbe& probe) const;
  [[nodiscard]] const Params& pattern() const { return p_; }  // see sparse_pattern.hpp
};

}  // namespace chunkwise
