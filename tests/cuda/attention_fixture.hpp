// Pieces shared by the PagedAttention tests (tests/cuda/test_attention.cpp) and the attention
// benchmark (bench/gpu/bench_attention.cpp): uploads, a stream, paged batch metadata, block-sparse
// masks and the double-precision softmax reference, so that both exercise the kernels the same way.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "chunkwise/cuda/attention.hpp"
#include "chunkwise/cuda/common.hpp"

namespace chunkwise::cuda::attention_fixture {

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& v) {
  DeviceBuffer<T> d(std::max<std::size_t>(v.size(), 1));
  if (!v.empty())
    check_cuda(cudaMemcpy(d.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  return d;
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

// Batch metadata in PagedAttention's layout (the page table filled by the caller) and its device copy.
struct PagedBatch {
  int block_size = 16;
  std::vector<std::int32_t> qs{0}, ps{0}, pages, kvl, pos;
  DeviceBuffer<std::int32_t> dqs, dps, dpages, dkvl, dpos;

  // A sequence of `rows` query rows at positions start .. start + rows - 1 over start + rows tokens.
  void add(int rows, int start) {
    const int len = start + rows;
    for (int i = 0; i < rows; ++i) pos.push_back(start + i);
    qs.push_back(qs.back() + rows);
    ps.push_back(ps.back() + (len + block_size - 1) / block_size);
    kvl.push_back(len);
  }
  [[nodiscard]] int rows() const { return static_cast<int>(pos.size()); }
  // The cache slot (block * block_size + offset) holding token p of sequence s.
  [[nodiscard]] std::size_t slot(int s, int p) const {
    const auto block = static_cast<std::size_t>(
        pages[static_cast<std::size_t>(ps[static_cast<std::size_t>(s)] + p / block_size)]);
    return block * static_cast<std::size_t>(block_size) + static_cast<std::size_t>(p % block_size);
  }
  void upload() {
    dqs = to_device(qs);
    dps = to_device(ps);
    dpages = to_device(pages);
    dkvl = to_device(kvl);
    dpos = to_device(pos);
  }
  [[nodiscard]] AttentionBatchView view() const {
    return {dqs.get(), dps.get(), dpages.get(), dkvl.get(), dpos.get(), static_cast<int>(kvl.size()), rows()};
  }
};

// A host mask in the BlockSparseMaskView layout plus its device copy.
struct Mask {
  int tile = 128;
  std::vector<std::int32_t> seq_row_start, row_ptr, col_idx, column_ptr, column_idx;
  DeviceBuffer<std::int32_t> d_srs, d_rp, d_ci, d_cp, d_cx;
  BlockSparseMaskView view{};
  void upload(bool with_columns) {
    d_srs = to_device(seq_row_start);
    d_rp = to_device(row_ptr);
    d_ci = to_device(col_idx);
    view = BlockSparseMaskView{tile, d_srs.get(), d_rp.get(), d_ci.get(), nullptr, nullptr};
    if (with_columns) {
      d_cp = to_device(column_ptr);
      d_cx = to_device(column_idx);
      view.column_ptr = d_cp.get();
      view.column_idx = d_cx.get();
    }
  }
};

// Adds softmax(q . k * scale) . v over `keys` to out[0, d), in double precision. k and v point at
// the query's kv head in slot 0; slot_of(key) is the element offset of that key's slot; value(e)
// widens one stored element.
template <class E, class SlotOf, class Value>
void add_softmax_reference(const E* q, const E* k, const E* v, const std::vector<int>& keys, SlotOf&& slot_of,
                           int d, double scale, Value&& value, double* out) {
  std::vector<double> w(keys.size());
  double mx = -1e300;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const E* kr = k + slot_of(keys[i]);
    double dot = 0;
    for (int x = 0; x < d; ++x) dot += value(q[x]) * value(kr[x]);
    w[i] = dot * scale;
    mx = std::max(mx, w[i]);
  }
  double sum = 0;
  for (double& x : w) sum += (x = std::exp(x - mx));
  for (std::size_t i = 0; i < keys.size(); ++i) {
    const E* vr = v + slot_of(keys[i]);
    for (int x = 0; x < d; ++x) out[x] += w[i] / sum * value(vr[x]);
  }
}

}  // namespace chunkwise::cuda::attention_fixture
