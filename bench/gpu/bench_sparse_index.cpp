// Device mask building (chunkwise::cuda::SparseIndexBuilder) for the stock sparse policies on the
// Llama-3-8B attention shape (32 q heads, 8 kv heads, head_dim 128, bf16): one layer's masks for
// one chunk (build() + finish(), what CudaBackend runs per layer), timed with CUDA events (2
// warm-ups, then the median of 10 runs). Inputs are random bf16 (sign random, magnitude in
// [0.5, 2)), the KV cache paged in 16-token blocks in random order.
//
// Cases: the last 8K-row chunk of a 32K and of a 128K prompt (chunked prefill), and a whole 32K
// and 128K prompt in one chunk; policies with the sizes of bench/gpu/sparse.sh's speed step:
// streaming (sink 1024, window 8192), vertical-slash (1000 columns, 6096 diagonals, tile 64),
// block-topk (top_k 100, tile 64), flex-prefill (defaults: tile 128, gamma 0.9, min_budget 1024).
//
//   bench_sparse_index [FILTER]   runs the cases whose name contains FILTER (default: all)
//
// Prints one table and per case `BENCH_JSON {"case", "shape", "ms", "ms_32_layers", "density",
// "workspace_mb"}`.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "chunkwise/cuda/attention.hpp"
#include "chunkwise/cuda/common.hpp"
#include "chunkwise/cuda/sparse_index.hpp"
#include "chunkwise/policy/sparse/block_mask.hpp"
#include "chunkwise/policy/sparse/sparse_pattern.hpp"

namespace {

using chunkwise::BlockMask;
using chunkwise::SparsePattern;
using chunkwise::cuda::BasicPagedKvView;
using chunkwise::cuda::bf16;
using chunkwise::cuda::check_cuda;
using chunkwise::cuda::DeviceBuffer;
using chunkwise::cuda::SparseIndexBuilder;
using chunkwise::cuda::SparseIndexChunk;

constexpr int kHeads = 32, kKvHeads = 8, kDim = 128, kBlock = 16, kLayers = 32;

// Random bf16 bits: random sign, magnitude in [0.5, 2) (splitmix64).
void fill_random(std::vector<std::uint16_t>& v, std::uint64_t seed) {
  std::uint64_t x = seed;
  for (std::size_t i = 0; i < v.size(); i += 4) {
    x += 0x9e3779b97f4a7c15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    for (std::size_t j = 0; j < 4 && i + j < v.size(); ++j) {
      const auto r = static_cast<std::uint32_t>(z >> (16 * j)) & 0xffffu;
      const std::uint32_t sign = (r >> 15) & 1u, exp = 126u + ((r >> 14) & 1u), man = r & 0x7fu;
      v[i + j] = static_cast<std::uint16_t>((sign << 15) | (exp << 7) | man);
    }
  }
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate"); }
  ~Stream() { cudaStreamDestroy(s); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
};

template <class F>
double median_ms(F&& fn, cudaStream_t s, int warmup, int iters) {
  cudaEvent_t a, b;
  check_cuda(cudaEventCreate(&a), "cudaEventCreate");
  check_cuda(cudaEventCreate(&b), "cudaEventCreate");
  for (int i = 0; i < warmup; ++i) fn();
  check_cuda(cudaStreamSynchronize(s), "warm-up");
  std::vector<double> t;
  for (int i = 0; i < iters; ++i) {
    check_cuda(cudaEventRecord(a, s), "cudaEventRecord");
    fn();
    check_cuda(cudaEventRecord(b, s), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(b), "cudaEventSynchronize");
    float ms = 0;
    check_cuda(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

struct Chunk {
  const char* name;
  int query_begin;
  int query_len;
};

struct Policy {
  const char* name;
  SparsePattern pattern;
};

std::vector<Policy> policies() {
  chunkwise::SparseFallback fb;
  fb.min_kv_len = 1024;
  chunkwise::VerticalSlashAttentionParams vs;
  vs.tile = 64;
  vs.config.default_sizes = {1000, 6096, false};
  vs.fallback = fb;
  chunkwise::FlexPrefillAttentionParams flex;
  flex.fallback = fb;
  return {{"streaming", chunkwise::StreamingAttentionParams{64, 1024, 8192, fb}},
          {"vertical-slash", vs},
          {"block-topk", chunkwise::BlockTopKAttentionParams{64, 100, fb}},
          {"flex-prefill", flex}};
}

}  // namespace

int main(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  const std::vector<Chunk> chunks{{"chunk8k@32k", 24576, 8192},
                                  {"chunk8k@128k", 122880, 8192},
                                  {"full@32k", 0, 32768},
                                  {"full@128k", 0, 131072}};
  try {
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("device: %s\n", prop.name);
    std::vector<std::pair<Chunk, Policy>> cases;
    for (const Chunk& c : chunks)
      for (const Policy& p : policies())
        if ((std::string(p.name) + "/" + c.name).find(filter) != std::string::npos) cases.emplace_back(c, p);
    if (cases.empty()) {
      std::printf("no case matches '%s'\n", filter.c_str());
      return 1;
    }
    // Inputs for the largest chunk asked for: q rows and a paged K cache.
    int max_kv = 0, max_rows = 0;
    for (const auto& [c, p] : cases) {
      max_kv = std::max(max_kv, c.query_begin + c.query_len);
      max_rows = std::max(max_rows, c.query_len);
    }
    const int blocks = (max_kv + kBlock - 1) / kBlock;
    std::vector<std::uint16_t> host(static_cast<std::size_t>(max_rows) * kHeads * kDim);
    fill_random(host, 1);
    DeviceBuffer<bf16> q(host.size());
    check_cuda(cudaMemcpy(q.get(), host.data(), host.size() * 2, cudaMemcpyHostToDevice), "upload q");
    host.assign(static_cast<std::size_t>(blocks) * kBlock * kKvHeads * kDim, 0);
    fill_random(host, 2);
    DeviceBuffer<bf16> k(host.size());
    check_cuda(cudaMemcpy(k.get(), host.data(), host.size() * 2, cudaMemcpyHostToDevice), "upload K");
    std::vector<std::int32_t> pages(static_cast<std::size_t>(blocks));
    std::iota(pages.begin(), pages.end(), 0);
    std::shuffle(pages.begin(), pages.end(), std::mt19937(3));
    DeviceBuffer<std::int32_t> d_pages(pages.size());
    check_cuda(cudaMemcpy(d_pages.get(), pages.data(), pages.size() * 4, cudaMemcpyHostToDevice),
               "upload pages");
    const BasicPagedKvView<bf16> kv{k.get(), k.get(), kBlock, kKvHeads, kDim};
    const float scale = 1.0f / std::sqrt(static_cast<float>(kDim));

    Stream st;
    std::printf("%-30s %10s %12s %9s %12s\n", "case", "ms/layer", "ms/32 layers", "density", "workspace MB");
    for (const auto& [c, p] : cases) {
      const std::string name = std::string(p.name) + "/" + c.name;
      const std::string shape =
          "32q/8kv d128 bf16, rows " + std::to_string(c.query_begin) + " + " + std::to_string(c.query_len);
      try {
        SparseIndexBuilder b;
        const SparseIndexChunk chunk{0, c.query_begin, c.query_len, c.query_begin + c.query_len};
        b.plan(p.pattern, {kLayers, kHeads, kKvHeads, kDim}, std::span(&chunk, 1), 1, st.s);
        auto run = [&] {
          b.build(0, 0, q.get(), kv, d_pages.get(), scale, st.s);
          b.finish(0, st.s);
        };
        const double ms = median_ms(run, st.s, 2, 10);
        std::vector<std::int32_t> counts(b.counts_size());
        check_cuda(cudaMemcpy(counts.data(), b.counts(), counts.size() * 4, cudaMemcpyDeviceToHost),
                   "counts");
        BlockMask summary;
        b.summary(0, counts[0], counts[1], summary);
        const double density = chunkwise::mask_cost(summary).density();
        const double mb = static_cast<double>(b.workspace_bytes()) / (1024.0 * 1024.0);
        std::printf("%-30s %10.3f %12.2f %9.4f %12.1f\n", name.c_str(), ms, ms * kLayers, density, mb);
        std::printf(
            "BENCH_JSON {\"case\": \"sparse_index/%s\", \"shape\": \"%s\", \"ms\": %.5f, \"ms_32_layers\": "
            "%.4f, "
            "\"density\": %.5f, \"workspace_mb\": %.1f}\n",
            name.c_str(), shape.c_str(), ms, ms * kLayers, density, mb);
      } catch (const std::exception& e) {
        std::printf("%-30s error: %s\n", name.c_str(), e.what());
        std::printf("BENCH_JSON {\"case\": \"sparse_index/%s\", \"shape\": \"%s\", \"error\": \"%s\"}\n",
                    name.c_str(), shape.c_str(), e.what());
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_sparse_index: %s\n", e.what());
    return 1;
  }
  return 0;
}
