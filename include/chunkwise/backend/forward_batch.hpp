// One forward pass of a ragged batch, as the session hands it to a backend: flat token rows
// plus the paged-attention metadata in CSR form (see cpu::AttentionBatch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "chunkwise/core/types.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"

namespace chunkwise {

struct SelectiveRecompute;  // chunkwise/backend/selective_recompute.hpp

struct ForwardBatch {
  std::vector<TokenId> tokens;            // [rows]
  std::vector<std::int32_t> positions;    // [rows]
  std::vector<std::int64_t> slots;        // [rows] cache slot = block * block_size + offset
  std::vector<std::int32_t> query_start;  // [seqs + 1]
  std::vector<std::int32_t> page_start;   // [seqs + 1]
  std::vector<std::int32_t> pages;
  std::vector<std::int32_t> kv_len;      // [seqs]
  std::vector<std::int32_t> logit_rows;  // rows whose logits are wanted, in output order
  // Sparse prefill: null for exact attention. Otherwise, in every layer, each sequence with more
  // than one query row and at least sparse->min_kv_len() keys is probed and attended with the
  // mask sparse->select() returns (its rows must sit at consecutive positions).
  SparseSelector* sparse = nullptr;
  // Chunk reuse: null for a plain forward. Otherwise the batch is one prefill sequence whose reused
  // chunks' KV is already in the cache, and only the rows the recompute selects run past its check
  // layer (see selective_recompute.hpp). Not combined with sparse.
  const SelectiveRecompute* recompute = nullptr;

  [[nodiscard]] std::int64_t rows() const { return static_cast<std::int64_t>(tokens.size()); }
  [[nodiscard]] std::int64_t num_seqs() const { return static_cast<std::int64_t>(kv_len.size()); }
};

// Throws Error(kInvalidArgument) when the metadata is inconsistent or points outside a pool of
// num_blocks blocks of block_size tokens, or logits_size floats cannot hold the wanted rows; with
// recompute set, also when it breaks its contract (all but check_layer < n_layers, which the backend
// checks).
void validate(const ForwardBatch& batch, std::size_t logits_size, int vocab, int num_blocks, int block_size);

}  // namespace chunkwise
