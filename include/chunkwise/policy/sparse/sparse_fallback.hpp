// When a sparse policy does not guess at all: short chunks and chosen layers stay exact.
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/sparse/attention_probe.hpp"

namespace chunkwise {

struct SparseFallback {
  int min_kv_len = 1024;          // chunks seeing fewer keys are attended densely (no probe)
  std::vector<int> dense_layers;  // layers always attended densely

  [[nodiscard]] bool dense_for(const AttentionProbe& p) const {
    return p.kv_len < min_kv_len ||
           std::find(dense_layers.begin(), dense_layers.end(), p.layer) != dense_layers.end();
  }
  void validate(const std::string& policy) const {
    check(min_kv_len >= 0, ErrorCode::kInvalidArgument, policy + ": min_kv_len must be >= 0");
    for (const int l : dense_layers)
      check(l >= 0, ErrorCode::kInvalidArgument, policy + ": dense layer indices must be >= 0");
  }
};

inline void check_tile(int tile, const std::string& policy) {
  check(tile == 64 || tile == 128, ErrorCode::kInvalidArgument,
        policy + ": tile must be 64 or 128, got " + std::to_string(tile));
}

namespace detail {

// What every stock sparse policy shares: its parameters (tile and fallback among them), checked
// once, and the two queries of the SparsePolicy concept that only read them.
template <class Params>
class SparsePolicyBase {
 public:
  [[nodiscard]] int tile() const { return p_.tile; }
  [[nodiscard]] int min_kv_len() const { return p_.fallback.min_kv_len; }
  [[nodiscard]] const Params& params() const { return p_; }

 protected:
  SparsePolicyBase(Params params, const std::string& policy) : p_(std::move(params)) {
    check_tile(p_.tile, policy);
    p_.fallback.validate(policy);
  }
  Params p_;
};

}  // namespace detail

}  // namespace chunkwise
