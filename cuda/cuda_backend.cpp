// The Llama forward on the GPU. One step: upload the batch metadata in one copy, embed, then per
// layer RMSNorm → fused QKV GEMM → RoPE + KV write → paged attention → O GEMM accumulated into
// the residual → RMSNorm → fused gate/up GEMM → SwiGLU → down GEMM accumulated into the residual;
// finally the norm and LM head on the rows whose logits are wanted, copied to the host. The
// storage type (bf16 or fp16) is a template parameter of the weights, the KV cache, the 16-bit
// activations and the forward pass, chosen once at construction.
//
// Sparse prefill (ForwardBatch::sparse): the step is planned with the selector's tile when some
// sequence qualifies (more than one query row, kv_len >= min_kv_len()). In every layer, after the
// KV write, the probe of each qualifying sequence (its post-RoPE queries and all its keys, widened
// to fp32 on the device: convert() and gather_paged_f32()) comes to pinned host memory in one copy,
// the stream is synchronised, select() runs on the host, and the masks of the batch are assembled
// into one BlockSparseMaskView uploaded in one async copy before that layer's attention. A layer
// whose masks are all dense runs the planned attention without a mask (dense causal over the same
// tile-aligned work list). Without a selector the step is exactly the dense one.
//
// A selector with a pattern (the stock policies, SparseSelector::pattern()) takes the device path
// instead: SparseIndexBuilder (chunkwise/cuda/sparse_index.hpp) is planned with the step and, in
// every layer that is not one of the pattern's dense layers, builds the masks of the qualifying
// chunks on the stream from s.q and the layer's K cache, with no host round trip. The masks'
// counts per chunk and layer and the build time per layer (CUDA events) come back after the step's
// last layer, with the logits (one small copy, no extra synchronisation); the selector then gets
// one record() per chunk and layer, as select() would have counted them.
//
// Chunk reuse (selective_recompute.hpp), as CpuBackend. A selective step runs every row up to the
// check layer; there, before the KV write, key_deviation() measures each row's fresh key against
// the loaded one, the deviations come to the host (the step's one extra synchronisation) and
// select_recompute_rows() picks the rows. After the check layer's KV write (every row's) the kept
// rows of the residual and the queries are moved to the front, their positions, slots and renumbered logit
// rows are uploaded, and attention is re-planned for them (all kv_len keys, causal by each row's own
// position). Chunk KV is placed by place_chunk_kv() (keys rotated on the device), from the host or from the
// chunk tier. write_kept_chunk_kv only queues: the next forward places every queued chunk on a second stream,
// overlapped with the layers it recomputes for all rows anyway (those below the first check layer, which it
// does not place), and waits for it before the first layer that reads loaded KV; every other use of the cache
// places the queue first. From the tier's device level that is one upload and one kernel; entries of its
// pinned host level cross the host link by the copy engine in groups of layers, each group placed and marked
// by an event that only its own layers wait for.
#include "chunkwise/cuda/cuda_backend.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <list>
#include <numeric>
#include <span>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

#include "chunkwise/backend/chunk_kv.hpp"
#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/attention.hpp"
#include "chunkwise/cuda/common.hpp"
#include "chunkwise/cuda/gemm.hpp"
#include "chunkwise/cuda/ops.hpp"
#include "chunkwise/cuda/sparse_index.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"

namespace chunkwise::cuda {

namespace {

// Uploads fp32 host arrays, concatenated and rounded to T (to nearest even), as one device array.
template <class T>
DeviceBuffer<T> upload(std::initializer_list<std::span<const float>> parts) {
  std::size_t n = 0;
  for (const auto& p : parts) n += p.size();
  std::vector<T> host;
  host.reserve(n);
  for (const auto& p : parts)
    for (const float x : p) host.push_back(T(x));
  DeviceBuffer<T> d(n);
  check_cuda(cudaMemcpy(d.get(), host.data(), n * sizeof(T), cudaMemcpyHostToDevice), "upload weights");
  return d;
}

std::span<const float> all(const Matrix& m) {
  return m.data;
}

template <class T>
struct Layer {
  DeviceBuffer<T> attn_norm, wqkv, wo, ffn_norm, w_gate_up, w_down;
};

// Everything held in the storage type T.
template <class T>
struct Storage {
  DeviceBuffer<T> embedding, output_norm, lm_head_own;
  const T* lm_head = nullptr;
  std::vector<Layer<T>> layers;
  DeviceBuffer<T> kv;  // [layers][K|V][num_blocks * block_size * kv_dim]
  // Activations, grown to the largest batch seen.
  DeviceBuffer<T> h, q, attn, act, h_out;

  explicit Storage(const ModelWeights& w) {
    embedding = upload<T>({all(w.token_embedding)});
    output_norm = upload<T>({w.output_norm});
    if (!w.output.empty()) lm_head_own = upload<T>({all(w.output)});
    lm_head = w.output.empty() ? embedding.get() : lm_head_own.get();
    for (const LayerWeights& L : w.layers) {
      Layer<T> d;
      d.attn_norm = upload<T>({L.attn_norm});
      d.wqkv = upload<T>({all(L.wq), all(L.wk), all(L.wv)});
      d.wo = upload<T>({all(L.wo)});
      d.ffn_norm = upload<T>({L.ffn_norm});
      d.w_gate_up = upload<T>({all(L.w_gate), all(L.w_up)});
      d.w_down = upload<T>({all(L.w_down)});
      layers.push_back(std::move(d));
    }
  }
};

// Pinned host memory for the per-step metadata upload.
class PinnedBytes {
 public:
  PinnedBytes() = default;
  ~PinnedBytes() {
    if (p_) cudaFreeHost(p_);
  }
  PinnedBytes(const PinnedBytes&) = delete;
  PinnedBytes& operator=(const PinnedBytes&) = delete;
  std::byte* reserve(std::size_t n) {
    if (n > n_) {
      if (p_) cudaFreeHost(p_);
      p_ = nullptr;
      check_cuda(cudaMallocHost(reinterpret_cast<void**>(&p_), n), "cudaMallocHost");
      n_ = n;
    }
    return p_;
  }
  [[nodiscard]] std::byte* get() const { return p_; }
  [[nodiscard]] std::size_t capacity() const { return n_; }

 private:
  std::byte* p_ = nullptr;
  std::size_t n_ = 0;
};

// Pinned memory for uploads the host does not wait for: acquire() waits until the previous copy
// from it (marked by release()) is done before handing it out again.
class FencedPinned {
 public:
  FencedPinned() = default;
  ~FencedPinned() {
    if (done_) {
      if (pending_) cudaEventSynchronize(done_);
      cudaEventDestroy(done_);
    }
  }
  FencedPinned(const FencedPinned&) = delete;
  FencedPinned& operator=(const FencedPinned&) = delete;
  PinnedBytes& acquire() {
    if (pending_) check_cuda(cudaEventSynchronize(done_), "cudaEventSynchronize(staging)");
    pending_ = false;
    return bytes_;
  }
  void release(cudaStream_t stream) {
    if (!done_) check_cuda(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(done_, stream), "cudaEventRecord");
    pending_ = true;
  }

 private:
  PinnedBytes bytes_;
  cudaEvent_t done_ = nullptr;
  bool pending_ = false;
};

// Pinned host memory of a fixed size, movable (the chunk tier's host level).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t n) : n_(n) {
    check_cuda(cudaMallocHost(reinterpret_cast<void**>(&p_), n), "cudaMallocHost(chunk tier)");
  }
  ~PinnedBuffer() {
    if (p_) cudaFreeHost(p_);
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFreeHost(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  [[nodiscard]] std::byte* get() const { return p_; }
  [[nodiscard]] std::size_t bytes() const { return n_; }

 private:
  std::byte* p_ = nullptr;
  std::size_t n_ = 0;
};

// Lays arrays out back to back (each 16-byte aligned) in one staging buffer and one device buffer.
class MetadataPack {
 public:
  template <class T>
  std::size_t add(const std::vector<T>& v) {
    return add(std::as_bytes(std::span<const T>(v)));
  }
  std::size_t add(std::span<const std::byte> bytes) {
    const std::size_t off = (size_ + 15) / 16 * 16;
    parts_.push_back({off, bytes.data(), bytes.size()});
    size_ = off + bytes.size();
    return off;
  }
  [[nodiscard]] std::size_t bytes() const { return size_; }
  // Copies everything into staging and issues one host-to-device copy.
  void upload(PinnedBytes& staging, DeviceBuffer<std::byte>& device, cudaStream_t stream) {
    std::byte* host = staging.reserve(std::max<std::size_t>(size_, 16));
    for (const Part& p : parts_)
      if (p.bytes) std::memcpy(host + p.offset, p.data, p.bytes);
    device.reserve(std::max<std::size_t>(size_, 16));
    check_cuda(cudaMemcpyAsync(device.get(), host, size_, cudaMemcpyHostToDevice, stream), "upload batch");
  }

 private:
  struct Part {
    std::size_t offset;
    const void* data;
    std::size_t bytes;
  };
  std::vector<Part> parts_;
  std::size_t size_ = 0;
};

// A grow-only capacity for `need`: at least half again the current one, so that a prompt growing
// chunk by chunk does not reallocate at every step.
std::size_t grown(std::size_t need, std::size_t current) {
  return need > current ? std::max(need, current + current / 2) : current;
}

std::size_t align_floats(std::size_t n) {
  return (n + 63) / 64 * 64;
}

[[noreturn]] void bad_mask(const std::string& what) {
  throw Error(ErrorCode::kInvalidArgument, "CUDA backend: sparse mask " + what);
}

// What CpuBackend reports for a selective forward (selective_recompute.hpp): the rows kept, the
// deviations (0 outside chunks) and each chunk's mean deviation.
// The checks of check_chunk_placement on the slots alone (a kept chunk has no ChunkKv to check).
void check_slots(std::int32_t position, std::span<const std::int64_t> slots, std::size_t n_tokens,
                 int num_blocks, int block_size) {
  check(position >= 0, ErrorCode::kInvalidArgument, "chunk KV: position must be >= 0");
  check(slots.size() == n_tokens, ErrorCode::kInvalidArgument, "chunk KV: need one cache slot per token");
  const std::int64_t max_slot = static_cast<std::int64_t>(num_blocks) * block_size;
  for (const auto s : slots)
    check(s >= 0 && s < max_slot, ErrorCode::kInvalidArgument,
          [&] { return "chunk KV: cache slot " + std::to_string(s) + " outside the KV pool"; });
}

// CSR offsets of `rows` rows over `entries` entries: rows + 1 of them, from 0, not decreasing.
void check_offsets(const std::vector<std::int32_t>& ptr, std::size_t rows, std::size_t entries,
                   const char* name) {
  if (ptr.size() != rows + 1 || ptr.front() != 0 || static_cast<std::size_t>(ptr.back()) != entries)
    bad_mask(std::string(name) + " must have n_heads * n_qtiles + 1 offsets from 0 to its index size");
  for (std::size_t r = 0; r < rows; ++r)
    if (ptr[r + 1] < ptr[r]) bad_mask(std::string(name) + " must not decrease");
}

// The checks the kernels need to stay in bounds and to read the rows where the plan puts them (the
// full validation is validate(mask, probe), which PolicySelector runs on every mask it returns).
void check_mask(const BlockMask& m, const AttentionProbe& p, int tile) {
  if (m.dense) return;
  if (m.tile != tile)
    bad_mask("tile " + std::to_string(m.tile) + " is not the selector's tile " + std::to_string(tile));
  if (m.n_heads != p.n_heads)
    bad_mask("has " + std::to_string(m.n_heads) + " heads, the model " + std::to_string(p.n_heads));
  if (m.first_qtile != first_query_tile(p, tile) || m.n_qtiles != query_tiles(p, tile))
    bad_mask("query tiles [" + std::to_string(m.first_qtile) + ", +" + std::to_string(m.n_qtiles) +
             ") do not cover the chunk at positions " + std::to_string(p.query_begin) + ".." +
             std::to_string(p.kv_len - 1));
  const auto rows = static_cast<std::size_t>(m.rows());
  check_offsets(m.row_ptr, rows, m.col_index.size(), "row_ptr");
  if (m.has_columns())
    check_offsets(m.column_ptr, rows, m.column_index.size(), "column_ptr");
  else if (!m.column_index.empty())
    bad_mask("has column_index without column_ptr");
}

}  // namespace

struct CudaBackend::Impl {
  std::shared_ptr<const Model> model;
  int num_blocks;
  int block_size;
  int device;
  DType dtype;
  cudaStream_t stream = nullptr;
  Gemm gemm;

  std::variant<Storage<bf16>, Storage<f16>> storage;
  std::vector<float> inv_freq_host;
  DeviceBuffer<float> inv_freq;
  std::size_t kv_layer_elems = 0;

  PagedAttention attention;
  PinnedBytes staging;
  DeviceBuffer<std::byte> metadata;
  // fp32 activations, grown to the largest batch seen.
  DeviceBuffer<float> x, qkv, gate_up, logits;
  DeviceBuffer<std::int32_t> tokens;
  DeviceBuffer<std::byte> sample_ws;

  // Sparse prefill: the qualifying sequences of the step, where their probe sits in the probe
  // buffers (float offsets: q [query_len, n_heads, head_dim], then k [kv_len, n_kv_heads, head_dim]),
  // and the per-layer mask, assembled in pinned memory and uploaded in one copy. Grow-only.
  struct SparseSeq {
    int seq = 0;
    int row_begin = 0;
    int query_begin = 0;
    int query_len = 0;
    int kv_len = 0;
    std::size_t q_off = 0;
    std::size_t k_off = 0;
  };
  std::vector<SparseSeq> sparse_seqs;
  std::size_t probe_floats = 0;
  int sparse_tile = 0;
  DeviceBuffer<float> probe_dev;
  PinnedBytes probe_host;
  std::vector<BlockMask> masks;
  PinnedBytes mask_staging;
  DeviceBuffer<std::int32_t> mask_dev;
  BlockSparseMaskView mask_view;
  // The device path (a selector with a pattern): the builder, its chunks (sparse_seqs' order),
  // per layer a start and an end event around the build and whether it ran, the counts' download
  // and the summary mask record() gets.
  bool device_sparse = false;
  SparseIndexBuilder index_builder;
  std::vector<SparseIndexChunk> index_chunks;
  std::vector<cudaEvent_t> index_events;
  std::vector<char> index_built;
  PinnedBytes index_counts;
  BlockMask index_summary;

  // Chunk KV placement: one layer of fp32 K|V (host uploads and downloads go through it), and the
  // descriptors, rotations and slots of placements with their pinned staging (fenced: a queued
  // placement's upload is not waited for).
  DeviceBuffer<float> chunk_f32;
  DeviceBuffer<std::byte> chunk_meta;
  FencedPinned chunk_staging;
  // Placements queued from the chunk tier (src: a kept entry's data, its key's LRU entry pinned
  // until placed: drop_kept places the queue first), the stream they run on, and the groups of
  // layers flushed but not yet waited for by the main stream (each: its first layer and the event
  // that marks it placed; ascending).
  struct Placement {
    const void* src = nullptr;
    std::int32_t n_tokens = 0;
    std::int32_t delta = 0;  // positions to rotate the keys by
    std::vector<std::int64_t> slots;
    // A host-level entry's pinned bytes: copied into link_staging before the kernel reads them
    // (src then points there).
    const std::byte* host = nullptr;
  };
  std::vector<Placement> queued;
  // The flush being issued: its placements (their descriptors uploaded: flushing_view), where the
  // host-level ones sit in link_staging (grow-only), the layer it began at and the next layer to
  // issue; over_host_link: some entry is host-level.
  std::vector<Placement> flushing;
  std::vector<std::size_t> flushing_at;
  DeviceBuffer<std::byte> link_staging;
  int flush_first = 0;
  int next_issue = 0;
  bool over_host_link = false;
  cudaStream_t place_stream = nullptr;
  std::vector<cudaEvent_t> place_events;  // one per layer, created with the stream
  struct PlacedGroup {
    int first_layer = 0;
    cudaEvent_t done = nullptr;
  };
  std::vector<PlacedGroup> unwaited;
  std::size_t next_unwaited = 0;
  std::vector<char> slot_marks;  // run()'s check that queued slots are the batch's
  // The chunk tier, two levels: device memory, and pinned host memory that the device's least
  // recently used entries move to (and entries too large for the device level go to). An entry is
  // [layers][K|V][n_tokens, kv_dim] in the storage type, at position0, in one level.
  struct KeptChunk {
    DeviceBuffer<std::byte> data;  // the device level's copy, or empty
    PinnedBuffer host;             // the host level's copy, or empty
    std::int32_t n_tokens = 0;
    std::int32_t position0 = 0;
    std::list<ChunkKey>::iterator used;  // its place in its level's lru
    [[nodiscard]] bool on_device() const { return data.get() != nullptr; }
    [[nodiscard]] std::size_t bytes() const { return on_device() ? data.bytes() : host.bytes(); }
  };
  struct TierLevel {
    std::list<ChunkKey> lru;  // most recently used first
    std::size_t capacity = 0;
    std::size_t bytes = 0;
  };
  std::unordered_map<ChunkKey, KeptChunk, ChunkKeyHash> kept;
  TierLevel device_level, host_level;

  // Selective recompute: the check layer's deviations, and the rows kept after it (their residual
  // rows gathered through x_kept; their metadata uploaded through narrow_staging).
  DeviceBuffer<float> deviation;
  PinnedBytes deviation_host;
  DeviceBuffer<float> x_kept;
  PinnedBytes narrow_staging;
  DeviceBuffer<std::byte> narrow_metadata;

  // The rows a step runs through the layers, as device views.
  struct StepRows {
    std::int64_t rows = 0;
    const std::int32_t* positions = nullptr;
    const std::int64_t* slots = nullptr;
    const std::int32_t* logit_rows = nullptr;
    AttentionBatchView batch;
    const std::int32_t* gathered = nullptr;  // after narrow(): each row's index among the rows before
  };

  Impl(std::shared_ptr<const Model> m, int nb, int bs, int dev, DType dt)
      : model(std::move(m)),
        num_blocks(nb),
        block_size(bs),
        device(dev),
        dtype(dt),
        storage(dt == DType::kF16 ? decltype(storage)(Storage<f16>(model->weights()))
                                  : decltype(storage)(Storage<bf16>(model->weights()))) {}

  ~Impl() {
    for (cudaEvent_t e : index_events) cudaEventDestroy(e);
    // A placement may still be reading a kept entry that the members free.
    for (cudaStream_t* st : {&place_stream, &stream})
      if (*st) {
        cudaStreamSynchronize(*st);
        cudaStreamDestroy(*st);
      }
    for (cudaEvent_t e : place_events) cudaEventDestroy(e);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  std::vector<std::size_t> run(const ForwardBatch& b, std::size_t logits_size,
                               const std::vector<std::span<const std::byte>>& extra);
  template <class E>  // E: the storage type (T is the row count there)
  std::vector<std::size_t> run(Storage<E>& s, const ForwardBatch& b, std::size_t logits_size,
                               const std::vector<std::span<const std::byte>>& extra);

  // Finds the sequences of b to probe (sparse_seqs) and sizes the probe buffers; returns the
  // sparse_tile to plan with (0: none qualifies, or no selector).
  int plan_sparse(const ForwardBatch& b);
  // Probes every qualifying sequence in layer l (its K cache already written), asks b.sparse for
  // the masks and uploads them; null when every mask is dense.
  template <class E>
  const BlockSparseMaskView* sparse_mask(Storage<E>& s, const ForwardBatch& b, int l,
                                         const std::int32_t* d_pages, float scale);
  // The device path's mask of layer l (null for a dense layer): built on the stream.
  template <class E>
  const BlockSparseMaskView* device_mask(Storage<E>& s, const ForwardBatch& b, int l,
                                         const std::int32_t* d_pages, const BasicPagedKvView<E>& cache,
                                         float scale);
  // After the step's synchronisation: one record() per qualifying chunk and layer.
  void report_device_masks(const ForwardBatch& b);

  // At a selective recompute's check layer (each stage of a gradual filtering), before the KV
  // write: the running rows' key deviations come to the host (one synchronisation); returns the
  // batch rows to keep, and fills the report. running: the batch rows `all` holds, ascending.
  template <class E>
  std::vector<std::int32_t> select_rows(Storage<E>& s, const ForwardBatch& b, int l, const StepRows& all,
                                        const std::vector<std::int32_t>& running);
  // At a check layer, after its KV write: moves the kept rows of x to the front, uploads their
  // metadata (their places among the rows before: `gathered`, for the caller's other arrays) and
  // re-plans attention for them (the same sequence: all kv_len keys, causal by each row's position).
  StepRows narrow(const ForwardBatch& b, const std::vector<std::int32_t>& keep,
                  const std::vector<std::int32_t>& running, const StepRows& all);

  // Uploads placements (their descriptors, rotations by delta positions and slots) on st.
  struct PlacementView {
    const ChunkPlacement* chunks = nullptr;
    const double* rotations = nullptr;
    const std::int64_t* slots = nullptr;
    std::int64_t n_tokens = 0;
  };
  PlacementView upload_placements(std::span<const Placement> places, cudaStream_t st);
  PlacementView flushing_view;
  // Enqueues the queued placements on place_stream, layers [first_layer, n_layers), and empties
  // the queue; the main stream must wait_placed(l) before it reads or writes layer l's KV. From
  // device memory one launch places every layer. With host-level entries the layers go in groups
  // (the first layer alone, then kLayersPerCopy at a time), each group's bytes copied by the copy
  // engine and placed with an event of its own, so that a forward's layer waits only for its own
  // group's load (CacheBlend's layer-wise pipelining of loading and recompute).
  // The groups are issued as the forward reaches them, kIssueAhead layers ahead: the copy engine
  // runs its copies in order, so copies queued all at once would hold back the forward's own small
  // uploads (a narrowed step's metadata) until every layer had crossed.
  static constexpr int kLayersPerCopy = 4;
  static constexpr int kIssueAhead = 8;
  void flush_queued(int first_layer);
  // Issues the flush's groups of layers that begin at or below up_to_layer.
  void issue_placements(int up_to_layer);
  // The main stream waits for the flushed groups of layers up to `layer` (all by default), after
  // issuing those up to kIssueAhead layers further.
  void wait_placed(int layer = std::numeric_limits<int>::max());
  // Every queued placement done before the main stream's next work: for uses of the cache other
  // than a forward.
  void place_queued() {
    flush_queued(0);
    wait_placed();
  }
  TierLevel& level_of(const KeptChunk& e) { return e.on_device() ? device_level : host_level; }
  void drop_kept(const ChunkKey& key);
  // Moves a device entry to the host level, or drops it when that level cannot hold it.
  void demote(const ChunkKey& key);
  // Least recently used first, until the level holds at most `limit` bytes: the device level's
  // entries are demoted, the host level's dropped.
  void evict_kept(TierLevel& level, std::size_t limit);

  template <class T>
  T* k_cache(Storage<T>& s, int l) {
    return s.kv.get() + (2 * static_cast<std::size_t>(l)) * kv_layer_elems;
  }
  template <class T>
  T* v_cache(Storage<T>& s, int l) {
    return s.kv.get() + (2 * static_cast<std::size_t>(l) + 1) * kv_layer_elems;
  }
  // Block `block` of layer l's K (kv = 0) or V (kv = 1) cache, block_bytes() long.
  std::byte* kv_block(int l, int kv, BlockId block) {
    return std::visit(
        [&](auto& s) {
          return reinterpret_cast<std::byte*>(s.kv.get() +
                                              (2 * static_cast<std::size_t>(l) + kv) * kv_layer_elems +
                                              static_cast<std::size_t>(block) * block_elems());
        },
        storage);
  }
  [[nodiscard]] std::size_t block_elems() const {
    return static_cast<std::size_t>(block_size) * static_cast<std::size_t>(model->config().kv_dim());
  }
  [[nodiscard]] std::size_t block_bytes() const { return block_elems() * sizeof(bf16); }
};

namespace {
// Host-to-device copies in one batched call where the driver has it (CUDA 12.8+), else one by one.
void copy_to_device(const std::vector<void*>& dsts, const std::vector<const void*>& srcs,
                    const std::vector<std::size_t>& sizes, cudaStream_t stream) {
  if (dsts.empty()) return;
  cudaMemcpyAttributes attrs{};
  attrs.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
  attrs.flags = cudaMemcpyFlagPreferOverlapWithCompute;
  std::size_t first = 0;
  const cudaError_t e =
      cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), dsts.size(), &attrs, &first, 1, stream);
  if (e == cudaSuccess) return;
  check(e == cudaErrorNotSupported || e == cudaErrorCallRequiresNewerDriver, ErrorCode::kBackend,
        std::string("cudaMemcpyBatchAsync: ") + cudaGetErrorString(e));
  cudaGetLastError();
  for (std::size_t i = 0; i < dsts.size(); ++i)
    check_cuda(cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyHostToDevice, stream), "copy to device");
}

void select_device(int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  check(device >= 0 && device < n, ErrorCode::kBackend,
        "CUDA device " + std::to_string(device) + " not present (" + std::to_string(n) + " visible)");
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
}
}  // namespace

CudaBackend::CudaBackend(std::shared_ptr<const Model> model, int num_blocks, int block_size, int device,
                         DType dtype) {
  check(model != nullptr, ErrorCode::kInvalidArgument, "CudaBackend needs a model");
  check(num_blocks > 0, ErrorCode::kInvalidArgument, "KV cache needs at least one block");
  check(block_size >= 1 && block_size <= 128, ErrorCode::kInvalidArgument,
        "CUDA backend: KV block size must be in [1, 128], got " + std::to_string(block_size));
  const ModelConfig& c = model->config();
  check(c.head_dim == 64 || c.head_dim == 128, ErrorCode::kUnsupported,
        "CUDA backend: head_dim " + std::to_string(c.head_dim) + " (64 and 128 are supported)");
  select_device(device);
  impl_ = std::make_unique<Impl>(std::move(model), num_blocks, block_size, device, dtype);
  Impl& m = *impl_;
  check_cuda(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "cudaStreamCreate");
  m.inv_freq_host = cpu::rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling);
  m.inv_freq = DeviceBuffer<float>(m.inv_freq_host.size());
  check_cuda(cudaMemcpy(m.inv_freq.get(), m.inv_freq_host.data(), m.inv_freq_host.size() * sizeof(float),
                        cudaMemcpyHostToDevice),
             "upload inv_freq");
  m.kv_layer_elems = static_cast<std::size_t>(num_blocks) * m.block_elems();
  std::visit(
      [&](auto& s) {
        s.kv = decltype(s.kv)(2 * static_cast<std::size_t>(c.n_layers) * m.kv_layer_elems);
        // Fresh blocks hold zeros, not garbage: a bug that reads unwritten KV then shows as a wrong
        // answer in the tests rather than as NaN by chance.
        check_cuda(cudaMemset(s.kv.get(), 0, s.kv.bytes()), "clear KV cache");
      },
      m.storage);
}

CudaBackend::~CudaBackend() = default;
CudaBackend::CudaBackend(CudaBackend&&) noexcept = default;
CudaBackend& CudaBackend::operator=(CudaBackend&&) noexcept = default;

int CudaBackend::num_blocks() const {
  return impl_->num_blocks;
}
int CudaBackend::block_size() const {
  return impl_->block_size;
}
int CudaBackend::device() const {
  return impl_->device;
}
DType CudaBackend::dtype() const {
  return impl_->dtype;
}

std::size_t CudaBackend::kv_bytes_per_block(const ModelConfig& c, int block_size) {
  return static_cast<std::size_t>(2) * c.n_layers * block_size * c.kv_dim() * sizeof(bf16);
}

int CudaBackend::Impl::plan_sparse(const ForwardBatch& b) {
  sparse_seqs.clear();
  probe_floats = 0;
  sparse_tile = 0;
  device_sparse = false;
  if (b.sparse == nullptr) return 0;
  const ModelConfig& c = model->config();
  const int min_kv = b.sparse->min_kv_len();
  for (std::int64_t s = 0; s < b.num_seqs(); ++s) {
    const auto su = static_cast<std::size_t>(s);
    const std::int32_t r0 = b.query_start[su], r1 = b.query_start[su + 1], kv = b.kv_len[su];
    if (r1 - r0 <= 1 || kv < min_kv) continue;
    // One chunk: positions kv - (r1 - r0) .. kv - 1, as the probe and the mask's tiles assume.
    for (std::int32_t r = r0; r < r1; ++r)
      if (b.positions[static_cast<std::size_t>(r)] != kv - (r1 - r)) {
        throw Error(ErrorCode::kInvalidArgument,
                    "CUDA backend: sparse prefill needs the rows of sequence " + std::to_string(s) +
                        " at consecutive positions ending at kv_len - 1 = " + std::to_string(kv - 1));
      }
    SparseSeq q;
    q.seq = static_cast<int>(s);
    q.row_begin = r0;
    q.query_begin = b.positions[static_cast<std::size_t>(r0)];
    q.query_len = r1 - r0;
    q.kv_len = kv;
    q.q_off = probe_floats;
    q.k_off =
        q.q_off + align_floats(static_cast<std::size_t>(q.query_len) * static_cast<std::size_t>(c.q_dim()));
    probe_floats =
        q.k_off + align_floats(static_cast<std::size_t>(kv) * static_cast<std::size_t>(c.kv_dim()));
    sparse_seqs.push_back(q);
  }
  if (sparse_seqs.empty()) return 0;
  sparse_tile = b.sparse->tile();
  check(sparse_tile == 64 || sparse_tile == 128, ErrorCode::kInvalidArgument,
        "CUDA backend: sparse tile " + std::to_string(sparse_tile) + " (64 or 128 are supported)");
  if (const SparsePattern* pattern = b.sparse->pattern()) {
    const int pattern_tile = std::visit([](const auto& p) { return p.tile; }, *pattern);
    check(pattern_tile == sparse_tile, ErrorCode::kInvalidArgument,
          "CUDA backend: the selector's pattern has tile " + std::to_string(pattern_tile) +
              ", its tile() is " + std::to_string(sparse_tile));
    device_sparse = true;
    index_chunks.clear();
    for (const SparseSeq& q : sparse_seqs)
      index_chunks.push_back({q.seq, q.query_begin, q.query_len, q.kv_len});
    index_builder.plan(*pattern, {c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim}, index_chunks,
                       static_cast<int>(b.num_seqs()), stream);
    while (index_events.size() < 2 * static_cast<std::size_t>(c.n_layers)) {
      cudaEvent_t e = nullptr;
      check_cuda(cudaEventCreate(&e), "cudaEventCreate");
      index_events.push_back(e);
    }
    index_built.assign(static_cast<std::size_t>(c.n_layers), 0);
    index_counts.reserve(std::max<std::size_t>(index_builder.counts_size(), 1) * sizeof(std::int32_t));
    return sparse_tile;
  }
  probe_dev.reserve(grown(probe_floats, probe_dev.size()));
  probe_host.reserve(grown(probe_floats * sizeof(float), probe_host.capacity()));
  return sparse_tile;
}

template <class E>
const BlockSparseMaskView* CudaBackend::Impl::sparse_mask(Storage<E>& s, const ForwardBatch& b, int l,
                                                          const std::int32_t* d_pages, float scale) {
  const ModelConfig& c = model->config();
  const cudaStream_t st = stream;
  const auto Q = static_cast<std::int64_t>(c.q_dim());
  // The probe: q exactly as attention reads it (post-RoPE, storage type) and keys 0 .. kv_len - 1
  // through the sequence's page table, both widened to fp32 (exact), then one copy to the host.
  for (const SparseSeq& q : sparse_seqs) {
    convert(s.q.get() + q.row_begin * Q, q.query_len * Q, probe_dev.get() + q.q_off, st);
    gather_paged_f32(k_cache(s, l), block_size, c.n_kv_heads, c.head_dim,
                     d_pages + b.page_start[static_cast<std::size_t>(q.seq)], q.kv_len,
                     probe_dev.get() + q.k_off, st);
  }
  check_cuda(cudaMemcpyAsync(probe_host.get(), probe_dev.get(), probe_floats * sizeof(float),
                             cudaMemcpyDeviceToHost, st),
             "download sparse probe");
  // Also orders every earlier use of the mask staging and device buffers (the last layer's upload
  // and attention) before they are rewritten or grown below.
  check_cuda(cudaStreamSynchronize(st), "sparse probe");
  const auto* host = reinterpret_cast<const float*>(probe_host.get());

  masks.clear();
  bool any_sparse = false;
  std::size_t n_rows = 0, n_cols = 0, n_columns = 0;
  bool columns = false;
  for (const SparseSeq& q : sparse_seqs) {
    AttentionProbe p;
    p.layer = l;
    p.n_layers = c.n_layers;
    p.n_heads = c.n_heads;
    p.n_kv_heads = c.n_kv_heads;
    p.head_dim = c.head_dim;
    p.query_begin = q.query_begin;
    p.query_len = q.query_len;
    p.kv_len = q.kv_len;
    p.scale = scale;
    p.q = host + q.q_off;
    p.k = host + q.k_off;
    BlockMask m = b.sparse->select(p);
    check_mask(m, p, sparse_tile);
    if (!m.dense) {
      any_sparse = true;
      n_rows += static_cast<std::size_t>(m.rows());
      n_cols += m.col_index.size();
      n_columns += m.column_index.size();
      columns = columns || m.has_columns();
    }
    masks.push_back(std::move(m));
  }
  if (!any_sparse) return nullptr;
  constexpr auto kMax = static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max());
  check(n_rows < kMax && n_cols < kMax && n_columns < kMax, ErrorCode::kInvalidArgument,
        "CUDA backend: sparse masks of the step exceed the int32 index range");

  // [seq_row_start | row_ptr | col_idx | column_ptr | column_idx] in one int32 array.
  const std::size_t n_seqs = b.kv_len.size();
  const std::size_t o_rp = n_seqs + 1, o_ci = o_rp + n_rows + 1, o_cp = o_ci + n_cols,
                    o_cx = o_cp + (columns ? n_rows + 1 : 0), total = o_cx + (columns ? n_columns : 0);
  mask_staging.reserve(grown(total * sizeof(std::int32_t), mask_staging.capacity()));
  auto* h = reinterpret_cast<std::int32_t*>(mask_staging.get());
  std::int32_t* srs = h;
  std::int32_t* rp = h + o_rp;
  std::int32_t* ci = h + o_ci;
  std::int32_t* cp = h + o_cp;
  std::int32_t* cx = h + o_cx;
  std::size_t row = 0, col = 0, column = 0, next = 0;
  rp[0] = 0;
  if (columns) cp[0] = 0;
  for (std::size_t seq = 0; seq < n_seqs; ++seq) {
    srs[seq] = static_cast<std::int32_t>(row);
    if (next >= sparse_seqs.size() || static_cast<std::size_t>(sparse_seqs[next].seq) != seq) continue;
    const BlockMask& m = masks[next++];
    if (m.dense) continue;  // an empty range: dense causal
    const auto rows = static_cast<std::size_t>(m.rows());
    for (std::size_t r = 0; r < rows; ++r) {
      rp[row + r + 1] = static_cast<std::int32_t>(col) + m.row_ptr[r + 1];
      if (columns)
        cp[row + r + 1] = static_cast<std::int32_t>(column) + (m.has_columns() ? m.column_ptr[r + 1] : 0);
    }
    if (!m.col_index.empty())
      std::memcpy(ci + col, m.col_index.data(), m.col_index.size() * sizeof(std::int32_t));
    if (!m.column_index.empty())
      std::memcpy(cx + column, m.column_index.data(), m.column_index.size() * sizeof(std::int32_t));
    row += rows;
    col += m.col_index.size();
    column += m.column_index.size();
  }
  srs[n_seqs] = static_cast<std::int32_t>(row);
  mask_dev.reserve(grown(std::max<std::size_t>(total, 1), mask_dev.size()));
  check_cuda(cudaMemcpyAsync(mask_dev.get(), h, total * sizeof(std::int32_t), cudaMemcpyHostToDevice, st),
             "upload sparse mask");
  std::int32_t* d = mask_dev.get();
  mask_view = BlockSparseMaskView{
      sparse_tile, d, d + o_rp, d + o_ci, columns ? d + o_cp : nullptr, columns ? d + o_cx : nullptr};
  return &mask_view;
}

template <class E>
const BlockSparseMaskView* CudaBackend::Impl::device_mask(Storage<E>& s, const ForwardBatch& b, int l,
                                                          const std::int32_t* d_pages,
                                                          const BasicPagedKvView<E>& cache, float scale) {
  if (index_builder.dense_layer(l)) return nullptr;
  const auto Q = static_cast<std::int64_t>(model->config().q_dim());
  const auto lu = static_cast<std::size_t>(l);
  check_cuda(cudaEventRecord(index_events[2 * lu], stream), "cudaEventRecord");
  for (std::size_t i = 0; i < sparse_seqs.size(); ++i) {
    const SparseSeq& q = sparse_seqs[i];
    index_builder.build(static_cast<int>(i), l, s.q.get() + q.row_begin * Q, cache,
                        d_pages + b.page_start[static_cast<std::size_t>(q.seq)], scale, stream);
  }
  const BlockSparseMaskView& view = index_builder.finish(l, stream);
  check_cuda(cudaEventRecord(index_events[2 * lu + 1], stream), "cudaEventRecord");
  index_built[lu] = 1;
  return &view;
}

void CudaBackend::Impl::report_device_masks(const ForwardBatch& b) {
  if (!device_sparse || b.sparse == nullptr) return;
  const int layers = model->config().n_layers;
  const auto n_chunks = sparse_seqs.size();
  const auto* counts = reinterpret_cast<const std::int32_t*>(index_counts.get());
  for (int l = 0; l < layers; ++l) {
    const auto lu = static_cast<std::size_t>(l);
    double seconds = 0;
    if (index_built[lu] != 0) {
      float ms = 0;
      check_cuda(cudaEventElapsedTime(&ms, index_events[2 * lu], index_events[2 * lu + 1]),
                 "cudaEventElapsedTime");
      seconds = static_cast<double>(ms) * 1e-3 / static_cast<double>(std::max<std::size_t>(n_chunks, 1));
    }
    for (std::size_t i = 0; i < n_chunks; ++i) {
      const int chunk = static_cast<int>(i);
      if (index_built[lu] == 0 || index_builder.dense_chunk(chunk)) {
        // A dense layer: what select() returns there (dense, no index).
        index_builder.summary(chunk, 0, 0, index_summary);
        index_summary.dense = true;
        index_summary.row_ptr.clear();
        index_summary.col_index.clear();
        index_summary.column_ptr.clear();
        index_summary.column_index.clear();
      } else {
        const std::size_t at = (lu * n_chunks + i) * 2;
        index_builder.summary(chunk, counts[at], counts[at + 1], index_summary);
      }
      b.sparse->record(index_summary, seconds);
    }
  }
}

// Runs the model on b up to the logits of the wanted rows, left in m.logits on the device;
// `extra` arrays ride along in the batch's one metadata upload (their device offsets come back).
std::vector<std::size_t> CudaBackend::Impl::run(const ForwardBatch& b, std::size_t logits_size,
                                                const std::vector<std::span<const std::byte>>& extra) {
  return std::visit([&](auto& s) { return run(s, b, logits_size, extra); }, storage);
}

template <class E>
std::vector<std::size_t> CudaBackend::Impl::run(Storage<E>& s, const ForwardBatch& b, std::size_t logits_size,
                                                const std::vector<std::span<const std::byte>>& extra) {
  const ModelConfig& c = model->config();
  const SelectiveRecompute* recompute = b.recompute;
  try {
    validate(b, logits_size, c.vocab, num_blocks, block_size);
    if (recompute != nullptr) {
      check(recompute->last_check_layer() < c.n_layers, ErrorCode::kInvalidArgument,
            "forward batch: selective recompute: check_layer " + std::to_string(recompute->check_layer) +
                " and " + std::to_string(recompute->gradual.size()) +
                " gradual stages must end below the model's " + std::to_string(c.n_layers) + " layers");
    }
    for (const TokenId t : b.tokens)
      check(t >= 0 && t < c.vocab, ErrorCode::kTokenOutOfRange, [&] {
        return "token id " + std::to_string(t) + " outside the vocabulary [0, " + std::to_string(c.vocab) +
               ")";
      });
  } catch (...) {
    // A rejected batch leaves the queued chunks placed whole, as if placed when queued.
    place_queued();
    throw;
  }
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  // Layers below the first check layer are recomputed for every row, so queued chunks (rows of
  // this batch, checked) need not be placed there, and their placement overlaps those layers.
  int first_loaded = 0;
  if (recompute != nullptr && !queued.empty()) {
    slot_marks.assign(static_cast<std::size_t>(num_blocks) * static_cast<std::size_t>(block_size), 0);
    for (const std::int64_t slot : b.slots) slot_marks[static_cast<std::size_t>(slot)] = 1;
    first_loaded = recompute->check_layer;
    for (const Placement& p : queued)
      for (const std::int64_t slot : p.slots)
        if (slot_marks[static_cast<std::size_t>(slot)] == 0) first_loaded = 0;
  }
  flush_queued(first_loaded);
  plan_sparse(b);
  const cudaStream_t st = stream;
  const std::int64_t H = c.hidden, Q = c.q_dim(), F = c.ffn;
  const std::int64_t QKV = Q + 2 * static_cast<std::int64_t>(c.kv_dim());
  const auto n_out = static_cast<std::int64_t>(b.logit_rows.size());
  const auto rows = static_cast<std::size_t>(std::max<std::int64_t>(b.rows(), 1));
  x.reserve(rows * H), qkv.reserve(rows * QKV), gate_up.reserve(rows * 2 * F);
  s.h.reserve(rows * H), s.q.reserve(rows * Q), s.attn.reserve(rows * Q), s.act.reserve(rows * F);
  s.h_out.reserve(static_cast<std::size_t>(std::max<std::int64_t>(n_out, 1)) * H);
  logits.reserve(static_cast<std::size_t>(std::max<std::int64_t>(n_out, 1)) * c.vocab);

  MetadataPack pack;
  const std::size_t o_tokens = pack.add(b.tokens), o_pos = pack.add(b.positions), o_slots = pack.add(b.slots),
                    o_qs = pack.add(b.query_start), o_ps = pack.add(b.page_start),
                    o_pages = pack.add(b.pages), o_kvlen = pack.add(b.kv_len),
                    o_logit_rows = pack.add(b.logit_rows);
  std::vector<std::size_t> extra_offsets;
  for (const auto& e : extra) extra_offsets.push_back(pack.add(e));
  pack.upload(staging, metadata, st);
  if (b.rows() == 0) {
    wait_placed();
    return extra_offsets;
  }
  auto dev = [&](std::size_t off) { return metadata.get() + off; };
  const auto* d_tokens = reinterpret_cast<const std::int32_t*>(dev(o_tokens));
  // The rows that run through the layers: the whole batch, until a selective recompute's check
  // layer narrows them to the rows it selects.
  StepRows r;
  r.rows = b.rows();
  r.positions = reinterpret_cast<const std::int32_t*>(dev(o_pos));
  r.slots = reinterpret_cast<const std::int64_t*>(dev(o_slots));
  r.logit_rows = reinterpret_cast<const std::int32_t*>(dev(o_logit_rows));
  r.batch = AttentionBatchView{reinterpret_cast<const std::int32_t*>(dev(o_qs)),
                               reinterpret_cast<const std::int32_t*>(dev(o_ps)),
                               reinterpret_cast<const std::int32_t*>(dev(o_pages)),
                               reinterpret_cast<const std::int32_t*>(dev(o_kvlen)),
                               r.positions,
                               static_cast<int>(b.num_seqs()),
                               static_cast<int>(r.rows)};
  attention.plan(b.query_start, b.page_start, b.kv_len, b.positions, c.n_heads, c.n_kv_heads, c.head_dim,
                 block_size, st, sparse_tile);
  // A selective recompute's running rows (batch rows, ascending): all until a selection narrows them.
  std::vector<std::int32_t> running;
  if (recompute != nullptr) {
    running.resize(static_cast<std::size_t>(r.rows));
    std::iota(running.begin(), running.end(), 0);
  }

  // validate() has checked the ids on the host; the kernel's own guard only keeps a corrupted
  // upload from reading out of bounds, so its flag is not asked for.
  embed(s.embedding.get(), c.vocab, H, d_tokens, r.rows, x.get(), nullptr, st);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  for (int l = 0; l < c.n_layers && r.rows > 0; ++l) {
    wait_placed(l);
    const Layer<E>& L = s.layers[static_cast<std::size_t>(l)];
    std::int64_t T = r.rows;
    add_rms_norm(x.get(), nullptr, L.attn_norm.get(), T, H, c.rms_eps, s.h.get(), st);
    gemm.linear(s.h.get(), T, H, L.wqkv.get(), QKV, qkv.get(), 0.0f, st);
    // At a check layer the loaded keys are still in the cache: measure, then overwrite them.
    const bool check_layer =
        recompute != nullptr && l >= recompute->check_layer && l <= recompute->last_check_layer();
    std::vector<std::int32_t> keep;
    if (check_layer) keep = select_rows(s, b, l, r, running);
    rope_write_kv(qkv.get(), T, c.n_heads, c.n_kv_heads, c.head_dim, r.positions, inv_freq.get(), r.slots,
                  s.q.get(), k_cache(s, l), v_cache(s, l), block_size, st);
    // Every row's fresh KV of this layer is written; past it only the kept rows matter, so they
    // narrow before attention (the others' outputs of this layer would be thrown away). Keeping
    // every row (all ratios 1) changes nothing: the same launches as a full prefill.
    if (check_layer && static_cast<std::int64_t>(keep.size()) < T) {
      r = narrow(b, keep, running, r);
      running = std::move(keep);
      T = r.rows;
      if (T == 0) break;
      gather_rows(s.q.get(), Q, r.gathered, T, s.attn.get(), st);  // s.attn is free until attention
      std::swap(s.q, s.attn);
    }
    const BasicPagedKvView<E> cache{k_cache(s, l), v_cache(s, l), block_size, c.n_kv_heads, c.head_dim};
    const BlockSparseMaskView* mask = nullptr;
    if (device_sparse)
      mask = device_mask(s, b, l, r.batch.pages, cache, scale);
    else if (!sparse_seqs.empty())
      mask = sparse_mask(s, b, l, r.batch.pages, scale);
    attention.run(s.q.get(), cache, r.batch, mask, scale, s.attn.get(), st);
    gemm.linear(s.attn.get(), T, Q, L.wo.get(), H, x.get(), 1.0f, st);  // += residual
    add_rms_norm(x.get(), nullptr, L.ffn_norm.get(), T, H, c.rms_eps, s.h.get(), st);
    gemm.linear(s.h.get(), T, H, L.w_gate_up.get(), 2 * F, gate_up.get(), 0.0f, st);
    swiglu(gate_up.get(), T, F, s.act.get(), st);
    gemm.linear(s.act.get(), T, F, L.w_down.get(), H, x.get(), 1.0f, st);  // += residual
  }
  wait_placed();
  if (device_sparse && index_builder.counts_size() > 0)
    check_cuda(
        cudaMemcpyAsync(index_counts.get(), index_builder.counts(),
                        index_builder.counts_size() * sizeof(std::int32_t), cudaMemcpyDeviceToHost, st),
        "download sparse mask counts");
  if (n_out > 0) {
    add_rms_norm(x.get(), nullptr, s.output_norm.get(), r.rows, H, c.rms_eps, s.h.get(), st);
    gather_rows(s.h.get(), H, r.logit_rows, n_out, s.h_out.get(), st);
    gemm.linear(s.h_out.get(), n_out, H, s.lm_head, c.vocab, logits.get(), 0.0f, st);
  }
  return extra_offsets;
}

template <class E>
std::vector<std::int32_t> CudaBackend::Impl::select_rows(Storage<E>& s, const ForwardBatch& b, int l,
                                                         const StepRows& all,
                                                         const std::vector<std::int32_t>& running) {
  const ModelConfig& c = model->config();
  const SelectiveRecompute& r = *b.recompute;
  const auto n = static_cast<std::size_t>(all.rows);
  deviation.reserve(n);
  key_deviation(qkv.get(), all.rows, c.n_heads, c.n_kv_heads, c.head_dim, all.positions, inv_freq.get(),
                all.slots, k_cache(s, l), deviation.get(), stream);
  auto* host = reinterpret_cast<float*>(deviation_host.reserve(n * sizeof(float)));
  check_cuda(cudaMemcpyAsync(host, deviation.get(), n * sizeof(float), cudaMemcpyDeviceToHost, stream),
             "download key deviations");
  check_cuda(cudaStreamSynchronize(stream), "selective recompute: key deviations");
  // Per batch row, as on the CPU: rows outside every chunk have no loaded key (0), chunk rows an
  // earlier stage dropped -inf.
  std::vector<float> d(b.tokens.size(), 0.0f);
  for (const auto& chunk : r.chunks)
    std::fill(d.begin() + chunk.begin, d.begin() + chunk.end, -std::numeric_limits<float>::infinity());
  for (std::size_t i = 0; i < n; ++i) {
    float& out = d[static_cast<std::size_t>(running[i])];
    if (out != 0.0f) out = host[i];
  }
  const auto stage = static_cast<std::size_t>(l - r.check_layer);
  std::vector<std::int32_t> keep = select_recompute_rows(r, d, stage);
  if (r.report != nullptr) {
    if (stage == 0)
      fill_recompute_report(r, std::move(d), keep);
    else
      r.report->rows = keep;
  }
  return keep;
}

CudaBackend::Impl::StepRows CudaBackend::Impl::narrow(const ForwardBatch& b,
                                                      const std::vector<std::int32_t>& keep,
                                                      const std::vector<std::int32_t>& running,
                                                      const StepRows& all) {
  const ModelConfig& c = model->config();
  const auto n = static_cast<std::int32_t>(keep.size());
  std::vector<std::int32_t> positions, logit_rows, gather;  // gather: the kept rows' places in x
  std::vector<std::int64_t> slots;
  for (const std::int32_t row : keep) {
    positions.push_back(b.positions[static_cast<std::size_t>(row)]);
    slots.push_back(b.slots[static_cast<std::size_t>(row)]);
    gather.push_back(
        static_cast<std::int32_t>(std::lower_bound(running.begin(), running.end(), row) - running.begin()));
  }
  // validate() made every logit row an always row, and always rows are all kept.
  for (const std::int32_t row : b.logit_rows)
    logit_rows.push_back(
        static_cast<std::int32_t>(std::lower_bound(keep.begin(), keep.end(), row) - keep.begin()));
  const std::vector<std::int32_t> query_start{0, n};
  MetadataPack pack;
  const std::size_t o_keep = pack.add(gather), o_pos = pack.add(positions), o_slots = pack.add(slots),
                    o_qs = pack.add(query_start), o_logit_rows = pack.add(logit_rows);
  pack.upload(narrow_staging, narrow_metadata, stream);
  auto dev = [&](std::size_t off) { return narrow_metadata.get() + off; };
  StepRows r;
  r.rows = n;
  r.positions = reinterpret_cast<const std::int32_t*>(dev(o_pos));
  r.slots = reinterpret_cast<const std::int64_t*>(dev(o_slots));
  r.logit_rows = reinterpret_cast<const std::int32_t*>(dev(o_logit_rows));
  r.batch = all.batch;
  r.batch.query_start = reinterpret_cast<const std::int32_t*>(dev(o_qs));
  r.batch.q_pos = r.positions;
  r.batch.rows = n;
  r.gathered = reinterpret_cast<const std::int32_t*>(dev(o_keep));
  if (n == 0) return r;
  const std::int64_t H = c.hidden;
  x_kept.reserve(static_cast<std::size_t>(n) * static_cast<std::size_t>(H));
  gather_rows(x.get(), H, r.gathered, n, x_kept.get(), stream);
  check_cuda(cudaMemcpyAsync(x.get(), x_kept.get(), static_cast<std::size_t>(n) * H * sizeof(float),
                             cudaMemcpyDeviceToDevice, stream),
             "narrow rows");
  attention.plan(query_start, b.page_start, b.kv_len, positions, c.n_heads, c.n_kv_heads, c.head_dim,
                 block_size, stream);
  return r;
}

void CudaBackend::forward(const ForwardBatch& b, std::span<float> out) {
  Impl& m = *impl_;
  m.run(b, out.size(), {});
  const std::size_t n = b.logit_rows.size() * static_cast<std::size_t>(m.model->config().vocab);
  if (n > 0)
    check_cuda(
        cudaMemcpyAsync(out.data(), m.logits.get(), n * sizeof(float), cudaMemcpyDeviceToHost, m.stream),
        "download logits");
  check_cuda(cudaStreamSynchronize(m.stream), "forward");
  m.report_device_masks(b);
}

void CudaBackend::forward_sample(const ForwardBatch& b, std::span<const SampleRow> rows,
                                 std::span<TokenId> out) {
  Impl& m = *impl_;
  const int vocab = m.model->config().vocab;
  check(rows.size() == b.logit_rows.size() && out.size() == rows.size(), ErrorCode::kInvalidArgument,
        "forward_sample: one sample row and one output per logits row");
  std::vector<DeviceSampleRow> params(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    validate(rows[i].params);
    params[i] = DeviceSampleRow{rows[i].params.temperature, rows[i].params.top_k, rows[i].params.top_p,
                                rows[i].params.seed, rows[i].step};
  }
  const std::vector<std::size_t> off =
      m.run(b, rows.size() * static_cast<std::size_t>(vocab), {std::as_bytes(std::span(params))});
  if (!rows.empty()) {
    m.tokens.reserve(rows.size());
    const std::size_t ws = sample_workspace_bytes(static_cast<std::int64_t>(rows.size()), vocab);
    m.sample_ws.reserve(std::max<std::size_t>(ws, 1));
    sample_tokens(m.logits.get(), static_cast<std::int64_t>(rows.size()), vocab,
                  reinterpret_cast<const DeviceSampleRow*>(m.metadata.get() + off[0]), m.tokens.get(),
                  m.sample_ws.get(), ws, m.stream);
    check_cuda(cudaMemcpyAsync(out.data(), m.tokens.get(), rows.size() * sizeof(TokenId),
                               cudaMemcpyDeviceToHost, m.stream),
               "download tokens");
  }
  check_cuda(cudaStreamSynchronize(m.stream), "forward");
  m.report_device_masks(b);
}

const Model& CudaBackend::model() const {
  return *impl_->model;
}

void CudaBackend::copy_block(BlockId src, BlockId dst) {
  Impl& m = *impl_;
  m.place_queued();
  check(src >= 0 && src < m.num_blocks && dst >= 0 && dst < m.num_blocks, ErrorCode::kInvalidArgument,
        "KV block out of range");
  for (int l = 0; l < m.model->config().n_layers; ++l)
    for (int kv = 0; kv < 2; ++kv)
      check_cuda(cudaMemcpyAsync(m.kv_block(l, kv, dst), m.kv_block(l, kv, src), m.block_bytes(),
                                 cudaMemcpyDeviceToDevice, m.stream),
                 "copy KV block");
  check_cuda(cudaStreamSynchronize(m.stream), "copy KV block");
}

void CudaBackend::save_block(BlockId src, std::span<std::byte> dst) const {
  Impl& m = *impl_;
  m.place_queued();
  check(src >= 0 && src < m.num_blocks, ErrorCode::kInvalidArgument, "KV block out of range");
  check(dst.size() == kv_bytes_per_block(m.model->config(), m.block_size), ErrorCode::kInvalidArgument,
        "KV block save: wrong buffer size");
  std::byte* out = dst.data();
  const int layers = m.model->config().n_layers;
  for (int kv = 0; kv < 2; ++kv)
    for (int l = 0; l < layers; ++l) {
      check_cuda(
          cudaMemcpyAsync(out, m.kv_block(l, kv, src), m.block_bytes(), cudaMemcpyDeviceToHost, m.stream),
          "save KV block");
      out += m.block_bytes();
    }
  check_cuda(cudaStreamSynchronize(m.stream), "save KV block");
}

void CudaBackend::load_block(BlockId dst, std::span<const std::byte> src) {
  Impl& m = *impl_;
  m.place_queued();
  check(dst >= 0 && dst < m.num_blocks, ErrorCode::kInvalidArgument, "KV block out of range");
  check(src.size() == kv_bytes_per_block(m.model->config(), m.block_size), ErrorCode::kInvalidArgument,
        "KV block load: wrong buffer size");
  const std::byte* in = src.data();
  const int layers = m.model->config().n_layers;
  for (int kv = 0; kv < 2; ++kv)
    for (int l = 0; l < layers; ++l) {
      check_cuda(
          cudaMemcpyAsync(m.kv_block(l, kv, dst), in, m.block_bytes(), cudaMemcpyHostToDevice, m.stream),
          "load KV block");
      in += m.block_bytes();
    }
  check_cuda(cudaStreamSynchronize(m.stream), "load KV block");
}

CudaBackend::Impl::PlacementView CudaBackend::Impl::upload_placements(std::span<const Placement> places,
                                                                      cudaStream_t st) {
  // cos and sin of delta * inv_freq in double, as rotate_keys forms them.
  const std::size_t half = inv_freq_host.size();
  std::vector<ChunkPlacement> chunks;
  std::vector<double> rotations;
  std::vector<std::int64_t> slots;
  for (const Placement& p : places) {
    ChunkPlacement c{p.src, p.n_tokens, static_cast<std::int32_t>(slots.size()), -1};
    if (p.delta != 0) {
      c.rotation = static_cast<std::int32_t>(rotations.size());
      rotations.resize(rotations.size() + 2 * half);
      double* r = rotations.data() + c.rotation;
      for (std::size_t i = 0; i < half; ++i) {
        const double angle = static_cast<double>(p.delta) * static_cast<double>(inv_freq_host[i]);
        r[i] = std::cos(angle);
        r[half + i] = std::sin(angle);
      }
    }
    chunks.push_back(c);
    slots.insert(slots.end(), p.slots.begin(), p.slots.end());
  }
  MetadataPack pack;
  const std::size_t o_chunks = pack.add(chunks), o_rotations = pack.add(rotations), o_slots = pack.add(slots);
  // A placement that is not waited for may still read the buffer a growth frees.
  if (pack.bytes() > chunk_meta.size())
    for (cudaStream_t s : {stream, place_stream}) check_cuda(cudaStreamSynchronize(s), "chunk KV metadata");
  pack.upload(chunk_staging.acquire(), chunk_meta, st);
  chunk_staging.release(st);
  return {reinterpret_cast<const ChunkPlacement*>(chunk_meta.get() + o_chunks),
          reinterpret_cast<const double*>(chunk_meta.get() + o_rotations),
          reinterpret_cast<const std::int64_t*>(chunk_meta.get() + o_slots),
          static_cast<std::int64_t>(slots.size())};
}

void CudaBackend::Impl::flush_queued(int first_layer) {
  if (queued.empty()) return;
  const ModelConfig& c = model->config();
  if (!place_stream) {
    check_cuda(cudaStreamCreateWithFlags(&place_stream, cudaStreamNonBlocking), "cudaStreamCreate");
    // One per layer, and one that marks the main stream's work before a flush.
    for (int l = 0; l <= c.n_layers; ++l) {
      cudaEvent_t e = nullptr;
      check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
      place_events.push_back(e);
    }
  }
  // The main stream waits for every earlier group (run() and place_queued() already have, unless a
  // forward failed midway), so the events can be recorded again.
  wait_placed();
  unwaited.clear();
  next_unwaited = 0;
  // The main stream's earlier work on these slots (a previous step's) comes first.
  cudaEvent_t before = place_events.back();
  check_cuda(cudaEventRecord(before, stream), "cudaEventRecord");
  check_cuda(cudaStreamWaitEvent(place_stream, before, 0), "cudaStreamWaitEvent");
  flushing = std::move(queued);
  queued.clear();
  flush_first = first_layer;
  next_issue = first_layer;
  // Host-level entries get their place in the staging buffer, laid out as the entries.
  const std::size_t entry_bytes_per_token =
      2 * static_cast<std::size_t>(c.kv_dim()) * c.n_layers * sizeof(bf16);
  flushing_at.assign(flushing.size(), 0);
  std::size_t staged = 0;
  for (std::size_t i = 0; i < flushing.size(); ++i)
    if (flushing[i].host != nullptr) {
      flushing_at[i] = staged;
      staged += (static_cast<std::size_t>(flushing[i].n_tokens) * entry_bytes_per_token + 15) / 16 * 16;
    }
  over_host_link = staged > 0;
  if (over_host_link) {
    link_staging.reserve(staged);
    for (std::size_t i = 0; i < flushing.size(); ++i)
      if (flushing[i].host != nullptr) flushing[i].src = link_staging.get() + flushing_at[i];
  }
  flushing_view = upload_placements(flushing, place_stream);
  issue_placements(over_host_link ? first_layer + kIssueAhead : c.n_layers);
}

void CudaBackend::Impl::issue_placements(int up_to_layer) {
  if (flushing.empty()) return;
  const ModelConfig& c = model->config();
  while (next_issue < c.n_layers && next_issue <= up_to_layer) {
    const int first = next_issue;
    const int layers = !over_host_link        ? c.n_layers - first
                       : first == flush_first ? 1
                                              : std::min(kLayersPerCopy, c.n_layers - first);
    if (over_host_link) {
      // One batched copy per group: the group's layers of every host-level entry.
      std::vector<void*> dsts;
      std::vector<const void*> srcs;
      std::vector<std::size_t> sizes;
      for (std::size_t i = 0; i < flushing.size(); ++i) {
        if (flushing[i].host == nullptr) continue;
        const std::size_t layer_bytes =
            static_cast<std::size_t>(flushing[i].n_tokens) * 2 * c.kv_dim() * sizeof(bf16);
        const std::size_t off = static_cast<std::size_t>(first) * layer_bytes;
        dsts.push_back(link_staging.get() + flushing_at[i] + off);
        srcs.push_back(flushing[i].host + off);
        sizes.push_back(static_cast<std::size_t>(layers) * layer_bytes);
      }
      copy_to_device(dsts, srcs, sizes, place_stream);
    }
    std::visit(
        [&](auto& s) {
          using E = std::remove_pointer_t<decltype(s.kv.get())>;
          place_chunk_kv<E>(flushing_view.chunks, static_cast<int>(flushing.size()), flushing_view.n_tokens,
                            first, layers, c.n_kv_heads, c.head_dim, flushing_view.rotations,
                            flushing_view.slots, s.kv.get(), static_cast<std::int64_t>(kv_layer_elems),
                            place_stream);
        },
        storage);
    cudaEvent_t done = place_events[static_cast<std::size_t>(first)];
    check_cuda(cudaEventRecord(done, place_stream), "cudaEventRecord");
    unwaited.push_back({first, done});
    next_issue = first + layers;
  }
  if (next_issue >= c.n_layers) flushing.clear();
}

void CudaBackend::Impl::wait_placed(int layer) {
  const int n_layers = model->config().n_layers;
  issue_placements(layer >= n_layers - kIssueAhead ? n_layers : layer + kIssueAhead);
  for (; next_unwaited < unwaited.size() && unwaited[next_unwaited].first_layer <= layer; ++next_unwaited)
    check_cuda(cudaStreamWaitEvent(stream, unwaited[next_unwaited].done, 0), "cudaStreamWaitEvent");
}

void CudaBackend::write_chunk_kv(const ChunkKv& kv, std::int32_t position,
                                 std::span<const std::int64_t> slots) {
  Impl& m = *impl_;
  const ModelConfig& c = m.model->config();
  check_chunk_placement(kv, c, position, slots, m.num_blocks, m.block_size);
  check_cuda(cudaSetDevice(m.device), "cudaSetDevice");
  m.place_queued();
  const std::size_t layer_floats = kv.k(0).size() + kv.v(0).size();
  m.chunk_f32.reserve(layer_floats);
  const Impl::Placement one{m.chunk_f32.get(), kv.n_tokens, position - kv.position0,
                            std::vector<std::int64_t>(slots.begin(), slots.end())};
  const Impl::PlacementView v = m.upload_placements({&one, 1}, m.stream);
  std::visit(
      [&](auto& s) {
        for (int l = 0; l < c.n_layers; ++l) {
          // K then V of layer l are contiguous in kv.data.
          check_cuda(cudaMemcpyAsync(m.chunk_f32.get(), kv.k(l).data(), layer_floats * sizeof(float),
                                     cudaMemcpyHostToDevice, m.stream),
                     "upload chunk KV");
          place_chunk_kv<float>(v.chunks, 1, v.n_tokens, 0, 1, c.n_kv_heads, c.head_dim, v.rotations, v.slots,
                                m.k_cache(s, l), static_cast<std::int64_t>(m.kv_layer_elems), m.stream);
        }
      },
      m.storage);
  // The caller may free kv once this returns.
  check_cuda(cudaStreamSynchronize(m.stream), "write chunk KV");
}

ChunkKv CudaBackend::read_chunk_kv(std::span<const TokenId> tokens, std::int32_t position0,
                                   std::span<const std::int64_t> slots) const {
  Impl& m = *impl_;
  const ModelConfig& c = m.model->config();
  ChunkKv kv = ChunkKv::zeros(tokens, c.n_layers, c.kv_dim(), position0);
  check_chunk_placement(kv, c, position0, slots, m.num_blocks, m.block_size);
  check_cuda(cudaSetDevice(m.device), "cudaSetDevice");
  m.place_queued();
  const Impl::Placement one{nullptr, kv.n_tokens, 0, std::vector<std::int64_t>(slots.begin(), slots.end())};
  const std::int64_t* d_slots = m.upload_placements({&one, 1}, m.stream).slots;
  const std::size_t layer_floats = kv.k(0).size() + kv.v(0).size();
  m.chunk_f32.reserve(layer_floats);
  std::visit(
      [&](auto& s) {
        for (int l = 0; l < c.n_layers; ++l) {
          gather_chunk_kv(m.k_cache(s, l), 1, static_cast<std::int64_t>(m.kv_layer_elems), kv.n_tokens,
                          kv.kv_dim, d_slots, m.chunk_f32.get(), m.stream);
          check_cuda(cudaMemcpyAsync(kv.k(l).data(), m.chunk_f32.get(), layer_floats * sizeof(float),
                                     cudaMemcpyDeviceToHost, m.stream),
                     "download chunk KV");
        }
      },
      m.storage);
  check_cuda(cudaStreamSynchronize(m.stream), "read chunk KV");
  return kv;
}

void CudaBackend::Impl::drop_kept(const ChunkKey& key) {
  // A placement from the entry may be queued or still running.
  place_queued();
  check_cuda(cudaStreamSynchronize(stream), "drop kept chunk KV");
  const auto it = kept.find(key);
  TierLevel& level = level_of(it->second);
  level.bytes -= it->second.bytes();
  level.lru.erase(it->second.used);
  kept.erase(it);
}

void CudaBackend::Impl::demote(const ChunkKey& key) {
  KeptChunk& e = kept.at(key);
  const std::size_t bytes = e.bytes();
  if (bytes > host_level.capacity) {
    drop_kept(key);
    return;
  }
  evict_kept(host_level, host_level.capacity - bytes);
  place_queued();
  PinnedBuffer host;
  try {
    host = PinnedBuffer(bytes);
  } catch (const Error&) {  // the host cannot pin that much now: the entry is dropped
    drop_kept(key);
    return;
  }
  check_cuda(cudaMemcpyAsync(host.get(), e.data.get(), bytes, cudaMemcpyDeviceToHost, stream),
             "demote chunk KV");
  check_cuda(cudaStreamSynchronize(stream), "demote chunk KV");
  device_level.bytes -= bytes;
  device_level.lru.erase(e.used);
  e.data = DeviceBuffer<std::byte>();
  e.host = std::move(host);
  host_level.lru.push_front(key);
  e.used = host_level.lru.begin();
  host_level.bytes += bytes;
}

void CudaBackend::Impl::evict_kept(TierLevel& level, std::size_t limit) {
  while (level.bytes > limit) {
    const ChunkKey victim = level.lru.back();
    if (&level == &device_level)
      demote(victim);
    else
      drop_kept(victim);
  }
}

void CudaBackend::set_chunk_tier_capacity(std::size_t device_bytes, std::size_t host_bytes) {
  Impl& m = *impl_;
  m.host_level.capacity = host_bytes;
  m.evict_kept(m.host_level, host_bytes);
  m.device_level.capacity = device_bytes;
  m.evict_kept(m.device_level, device_bytes);
}

void CudaBackend::keep_chunk_kv(const ChunkKey& key, const ChunkKv& kv) {
  Impl& m = *impl_;
  const ModelConfig& c = m.model->config();
  kv.validate();
  check(kv.n_layers == c.n_layers && kv.kv_dim == c.kv_dim(), ErrorCode::kInvalidArgument,
        "chunk KV of " + std::to_string(kv.n_layers) + " layers of width " + std::to_string(kv.kv_dim) +
            " kept for a model of " + std::to_string(c.n_layers) + " of width " + std::to_string(c.kv_dim()));
  if (m.kept.count(key) != 0) m.drop_kept(key);
  const std::size_t bytes = kv.data.size() * sizeof(bf16);
  const bool to_device = bytes <= m.device_level.capacity;
  if (!to_device && bytes > m.host_level.capacity) return;
  if (to_device) m.evict_kept(m.device_level, m.device_level.capacity - bytes);
  check_cuda(cudaSetDevice(m.device), "cudaSetDevice");
  // Converted to the storage type on the device; an entry for the host level then comes back.
  Impl::KeptChunk entry;
  // The tier is a cache: memory it cannot get means an entry not kept, not a failed request.
  try {
    entry.data = DeviceBuffer<std::byte>(bytes);
  } catch (const Error&) {
    return;
  }
  entry.n_tokens = kv.n_tokens;
  entry.position0 = kv.position0;
  const std::size_t layer_floats = kv.k(0).size() + kv.v(0).size();
  m.chunk_f32.reserve(layer_floats);
  std::visit(
      [&](auto& s) {
        using E = std::remove_pointer_t<decltype(s.kv.get())>;
        auto* dst = reinterpret_cast<E*>(entry.data.get());
        for (int l = 0; l < c.n_layers; ++l) {
          check_cuda(cudaMemcpyAsync(m.chunk_f32.get(), kv.k(l).data(), layer_floats * sizeof(float),
                                     cudaMemcpyHostToDevice, m.stream),
                     "upload chunk KV");
          convert(m.chunk_f32.get(), static_cast<std::int64_t>(layer_floats),
                  dst + static_cast<std::size_t>(l) * layer_floats, m.stream);
        }
      },
      m.storage);
  check_cuda(cudaStreamSynchronize(m.stream), "keep chunk KV");
  m.device_level.lru.push_front(key);
  entry.used = m.device_level.lru.begin();
  m.device_level.bytes += bytes;
  m.kept.emplace(key, std::move(entry));
  if (!to_device) m.demote(key);
}

bool CudaBackend::write_kept_chunk_kv(const ChunkKey& key, std::int32_t position,
                                      std::span<const std::int64_t> slots) {
  Impl& m = *impl_;
  const auto it = m.kept.find(key);
  if (it == m.kept.end()) return false;
  Impl::KeptChunk& entry = it->second;
  check_slots(position, slots, static_cast<std::size_t>(entry.n_tokens), m.num_blocks, m.block_size);
  std::list<ChunkKey>& lru = m.level_of(entry).lru;
  lru.splice(lru.begin(), lru, entry.used);
  m.queued.push_back({entry.data.get(), entry.n_tokens, position - entry.position0,
                      std::vector<std::int64_t>(slots.begin(), slots.end()),
                      entry.on_device() ? nullptr : entry.host.get()});
  return true;
}

bool CudaBackend::keeps_chunk_kv(const ChunkKey& key) const {
  return impl_->kept.contains(key);
}

ChunkTierUsage CudaBackend::chunk_tier_usage() const {
  const Impl& m = *impl_;
  ChunkTierUsage u;
  for (const auto& [key, e] : m.kept) {
    (void)key;
    if (e.on_device())
      ++u.device_entries;
    else
      ++u.host_entries;
  }
  u.device_bytes = m.device_level.bytes;
  u.host_bytes = m.host_level.bytes;
  return u;
}

namespace {
class CudaProvider final : public BackendProvider {
 public:
  CudaProvider(int device, DType dtype) : device_(device), dtype_(dtype) {}
  [[nodiscard]] std::string name() const override {
    std::string n = "cuda:" + std::to_string(device_);
    if (dtype_ != DType::kBF16) n.append(" ").append(to_string(dtype_));
    return n;
  }
  [[nodiscard]] std::size_t kv_bytes_per_block(const ModelConfig& config, int block_size) const override {
    return CudaBackend::kv_bytes_per_block(config, block_size);
  }
  [[nodiscard]] std::unique_ptr<BackendInterface> create(std::shared_ptr<const Model> model, int num_blocks,
                                                         int block_size) const override {
    return std::make_unique<detail::BackendAdapter<CudaBackend>>(std::move(model), num_blocks, block_size,
                                                                 device_, dtype_);
  }

 private:
  int device_;
  DType dtype_;
};
}  // namespace

std::shared_ptr<const BackendProvider> backend_provider(int device, DType dtype) {
  return std::make_shared<const CudaProvider>(device, dtype);
}

}  // namespace chunkwise::cuda
