// Forward steps of the default model on CudaBackend at the shapes a chunk-reuse prefill runs: a
// full 4,096-token prefill, narrow steps of n rows over a 4,096-token cached prefix (what the
// layers after a selective recompute's check layer see), and selective forwards at recompute ratio
// 0 and 0.15 over 8 chunks of 496 rows. Wall time per forward() call (it ends synchronised):
// 3 warm-ups, then the median of 20. The same prompt's KV is in the cache for every case (speed
// does not depend on which KV is there). Also the host's time to enqueue one product of the qkv
// projection at 32 rows (200 calls back to back, then one synchronisation) next to the time per
// product once the GPU has run them all, through Gemm::linear (cuBLASLt, plan kept per shape) and
// through a plain cublasGemmEx call (cuBLAS's heuristic on every call).
//
//   bench_forward_steps [--once CASE]   (model: $CHUNKWISE_MODEL or the set-up cache)
//
// --once runs one warm-up and one timed call of CASE and nothing else (the cache holds whatever
// it holds), for a kernel profiler: the second half of the kernels it lists is one forward, and
// their time against the wall time above says whether a step is bound by the GPU or by the host's
// launches. Prints one table and per case `BENCH_JSON {"case", "rows", "ms"}`.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/cuda/cuda_backend.hpp"
#include "chunkwise/cuda/gemm.hpp"
#include "chunkwise/model/model.hpp"

namespace {

using chunkwise::ForwardBatch;
using chunkwise::SelectiveRecompute;
using chunkwise::TokenId;

constexpr int kContext = 4096, kBlock = 16, kChunks = 8, kPrefix = 32, kQuestion = 64;

// One sequence on pages 0.. holding positions [0, kContext); rows [begin, kContext) run.
ForwardBatch tail_batch(const std::vector<TokenId>& tokens, int begin) {
  ForwardBatch b;
  b.query_start = {0, kContext - begin};
  b.page_start = {0, kContext / kBlock};
  for (int p = 0; p < kContext / kBlock; ++p) b.pages.push_back(p);
  b.kv_len = {kContext};
  for (int p = begin; p < kContext; ++p) {
    b.tokens.push_back(tokens[static_cast<std::size_t>(p)]);
    b.positions.push_back(p);
    b.slots.push_back(p);
  }
  b.logit_rows = {kContext - begin - 1};
  return b;
}

// [prefix][8 chunks][question] over the whole context, the chunks' KV taken as loaded.
SelectiveRecompute recompute(double ratio, int min_tokens) {
  SelectiveRecompute r;
  r.min_tokens = min_tokens;
  const int chunk = (kContext - kPrefix - kQuestion) / kChunks;
  for (int c = 0; c < kChunks; ++c)
    r.chunks.push_back({kPrefix + c * chunk, kPrefix + (c + 1) * chunk, ratio});
  r.always = {{0, kPrefix}, {kPrefix + kChunks * chunk, kContext}};
  return r;
}

double median_ms(const std::function<void()>& f, int warm, int runs) {
  for (int i = 0; i < warm; ++i) f();
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

// Host microseconds to enqueue one product of [32, 576] x [960, 576]^T, and microseconds per product
// including the GPU's time: through Gemm::linear and through cublasGemmEx.
struct Enqueue {
  double host_us = 0, total_us = 0;
};

std::pair<Enqueue, Enqueue> gemm_enqueue() {
  using chunkwise::cuda::bf16;
  using chunkwise::cuda::check_cublas;
  using chunkwise::cuda::check_cuda;
  constexpr int kM = 32, kK = 576, kN = 960, kCalls = 200;
  chunkwise::cuda::DeviceBuffer<bf16> x(kM * kK), w(kN * kK);
  chunkwise::cuda::DeviceBuffer<float> y(kM * kN);
  check_cuda(cudaMemset(x.get(), 0, x.bytes()), "cudaMemset");
  check_cuda(cudaMemset(w.get(), 0, w.bytes()), "cudaMemset");
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate");
  chunkwise::cuda::Gemm gemm;
  cublasHandle_t handle = nullptr;
  check_cublas(cublasCreate(&handle), "cublasCreate");
  check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
  const float alpha = 1.0f, beta = 0.0f;
  auto time = [&](const std::function<void()>& call) {
    Enqueue e;
    for (int rep = 0; rep < 2; ++rep) {  // the first plans the shape and warms up
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < kCalls; ++i) call();
      const auto t1 = std::chrono::steady_clock::now();
      check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      const auto t2 = std::chrono::steady_clock::now();
      e = {std::chrono::duration<double, std::micro>(t1 - t0).count() / kCalls,
           std::chrono::duration<double, std::micro>(t2 - t0).count() / kCalls};
    }
    return e;
  };
  const Enqueue ours = time([&] { gemm.linear(x.get(), kM, kK, w.get(), kN, y.get(), 0.0f, stream); });
  const Enqueue ex = time([&] {
    check_cublas(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, kN, kM, kK, &alpha, w.get(), CUDA_R_16BF, kK,
                              x.get(), CUDA_R_16BF, kK, &beta, y.get(), CUDA_R_32F, kN, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx");
  });
  cublasDestroy(handle);
  check_cuda(cudaStreamDestroy(stream), "cudaStreamDestroy");
  return {ours, ex};
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string once = argc == 3 && std::string(argv[1]) == "--once" ? argv[2] : "";
  auto model = chunkwise::Model::load(chunkwise::default_model_path());
  const int vocab = model->config().vocab;
  chunkwise::cuda::CudaBackend backend(model, kContext / kBlock, kBlock);
  const auto text = model->tokenizer().encode(
      "The lighthouse keeper climbed the spiral stairs every evening at dusk, trimmed the wick, polished "
      "the great lens and wrote the weather into the log book before the ships came past the reef. ");
  std::vector<TokenId> tokens;
  while (static_cast<int>(tokens.size()) < kContext) tokens.insert(tokens.end(), text.begin(), text.end());
  std::vector<float> logits(static_cast<std::size_t>(vocab));

  struct Case {
    std::string name;
    ForwardBatch batch;
    SelectiveRecompute recompute;
    bool selective = false;
  };
  std::vector<Case> cases;
  cases.push_back({"prefill_4096", tail_batch(tokens, 0), {}, false});
  for (const int n : {1, 32, 256, 640})
    cases.push_back({"narrow_" + std::to_string(n), tail_batch(tokens, kContext - n), {}, false});
  cases.push_back({"selective_r0", tail_batch(tokens, 0), recompute(0.0, 0), true});
  cases.push_back({"selective_r0.15", tail_batch(tokens, 0), recompute(0.15, 256), true});

  if (once.empty()) backend.forward(cases.front().batch, logits);  // the prompt's KV, for every case
  std::printf("%-24s %6s %10s\n", "case", "rows", "ms");
  for (Case& c : cases) {
    if (!once.empty() && c.name != once) continue;
    if (c.selective) c.batch.recompute = &c.recompute;
    const double ms =
        median_ms([&] { backend.forward(c.batch, logits); }, once.empty() ? 3 : 1, once.empty() ? 20 : 1);
    std::printf("%-24s %6lld %10.3f\n", c.name.c_str(), static_cast<long long>(c.batch.rows()), ms);
    std::printf("BENCH_JSON {\"case\": \"%s\", \"rows\": %lld, \"ms\": %.4f}\n", c.name.c_str(),
                static_cast<long long>(c.batch.rows()), ms);
  }
  if (once.empty()) {
    const auto [ours, ex] = gemm_enqueue();
    for (const auto& [name, e] : {std::pair{"gemm_enqueue", ours}, std::pair{"cublas_gemm_ex_enqueue", ex}}) {
      std::printf("%-24s 32x576x960: %.2f us to enqueue, %.2f us per product\n", name, e.host_us, e.total_us);
      std::printf("BENCH_JSON {\"case\": \"%s\", \"host_us\": %.3f, \"total_us\": %.3f}\n", name, e.host_us,
                  e.total_us);
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_forward_steps: %s\n", e.what());
  return 1;
}
