// The default model on the GPU against the CPU reference: next-token argmax agreement under
// teacher forcing on 2,000 positions of natural text, with the KL divergence, for both storage
// types; chunked prefill over cached KV equals one pass; KV blocks survive save/load; the Engine
// runs a workload on the GPU to completion.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "catch.hpp"
#include "chunkwise/backend/prompt_logits.hpp"
#include "chunkwise/cuda/cuda_backend.hpp"
#include "chunkwise/sched/engine.hpp"
#include "model/model_fixture.hpp"
#include "model_compare.hpp"

namespace {

using namespace chunkwise;
using cuda_test::Agreement;
using cuda_test::compare;
using cuda_test::natural_text;

}  // namespace

TEST_CASE("Default model on the GPU agrees with the CPU backend under teacher forcing", "[cuda][model]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const std::vector<TokenId> ids = natural_text(*model, 2000);
  const std::vector<float> cpu_logits = prompt_logits(model, ids, 16);
  for (const cuda::DType dtype : {cuda::DType::kBF16, cuda::DType::kF16}) {
    // bf16 storage is the limit, not the kernels: rounding the weights, GEMM inputs, q/k/v, the KV
    // cache and the LM head input to bf16 in the CPU reference gives 98.6% / KL 2.4e-4 there; to
    // fp16 at the same points, 99.9% / KL 7e-6.
    const bool is_bf16 = dtype == cuda::DType::kBF16;
    const auto gpu = cuda::backend_provider(0, dtype);
    for (const int block_size : {16, 1, 128}) {
      const std::vector<float> gpu_logits = prompt_logits(model, ids, block_size, gpu.get());
      REQUIRE(gpu_logits.size() == cpu_logits.size());
      REQUIRE(std::none_of(gpu_logits.begin(), gpu_logits.end(), [](float x) { return std::isnan(x); }));
      const Agreement a = compare(cpu_logits, gpu_logits, model->config().vocab);
      std::printf(
          "teacher forcing, 2000 positions, %s, block size %d: top-1 agreement %.4f, KL mean %.5f max %.4f\n",
          std::string(cuda::to_string(dtype)).c_str(), block_size, a.top1, a.mean_kl, a.max_kl);
      CHECK(a.top1 >= (is_bf16 ? 0.98 : 0.99));
      CHECK(a.mean_kl < (is_bf16 ? 1e-3 : 0.01));
    }
  }
}

TEST_CASE("GPU chunked prefill over cached KV equals one pass", "[cuda][model]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const std::vector<TokenId> ids = natural_text(*model, 700);
  const int bs = 16, vocab = model->config().vocab;
  const int blocks = (700 + bs - 1) / bs;
  std::vector<float> one = prompt_logits(model, ids, bs, cuda::backend_provider(0).get());

  // The same prompt in chunks of 100, 37, 250, 313 tokens over shuffled pages.
  cuda::CudaBackend backend(model, blocks + 8, bs);
  std::vector<std::int32_t> pages(static_cast<std::size_t>(blocks));
  for (int p = 0; p < blocks; ++p) pages[static_cast<std::size_t>(p)] = (p * 7 + 3) % (blocks + 8);
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  REQUIRE(static_cast<int>(pages.size()) == blocks);
  std::reverse(pages.begin(), pages.end());
  std::vector<float> chunked;
  int done = 0;
  for (const int n : {100, 37, 250, 313}) {
    ForwardBatch b;
    for (int i = done; i < done + n; ++i) {
      b.tokens.push_back(ids[static_cast<std::size_t>(i)]);
      b.positions.push_back(i);
      b.slots.push_back(static_cast<std::int64_t>(pages[static_cast<std::size_t>(i / bs)]) * bs + i % bs);
      b.logit_rows.push_back(i - done);
    }
    const int used = (done + n + bs - 1) / bs;
    b.pages.assign(pages.begin(), pages.begin() + used);
    b.query_start = {0, n};
    b.page_start = {0, used};
    b.kv_len = {done + n};
    std::vector<float> logits(static_cast<std::size_t>(n) * static_cast<std::size_t>(vocab));
    backend.forward(b, logits);
    chunked.insert(chunked.end(), logits.begin(), logits.end());
    done += n;
  }
  const Agreement a = compare(one, chunked, vocab);
  std::printf("GPU chunked vs one pass, 700 positions: top-1 %.4f, KL mean %.6f\n", a.top1, a.mean_kl);
  // Both are bf16 runs that sum in different orders (query tiles, KV splits, the GEMM algorithm
  // cuBLASLt picks for each row count); two such runs agree about as well as bf16 and the fp32 CPU
  // do (top-1 0.987 under teacher forcing above, 0.9871 here on an H200). A wrong prefix shows in
  // the KL.
  CHECK(a.top1 >= 0.98);
  CHECK(a.mean_kl < 1e-3);
}

TEST_CASE("GPU KV blocks survive save, load and copy", "[cuda][model]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  const std::vector<TokenId> ids = natural_text(*model, 64);
  cuda::CudaBackend backend(model, 16, 16);
  ForwardBatch b;
  for (int i = 0; i < 64; ++i) {
    b.tokens.push_back(ids[static_cast<std::size_t>(i)]);
    b.positions.push_back(i);
    b.slots.push_back(i);
  }
  b.pages = {0, 1, 2, 3};
  b.query_start = {0, 64};
  b.page_start = {0, 4};
  b.kv_len = {64};
  backend.forward(b, {});
  const std::size_t bytes = cuda::CudaBackend::kv_bytes_per_block(model->config(), 16);
  std::vector<std::byte> saved(bytes), again(bytes), copied(bytes);
  backend.save_block(2, saved);
  REQUIRE(std::any_of(saved.begin(), saved.end(), [](std::byte x) { return x != std::byte{0}; }));
  backend.load_block(9, saved);
  backend.save_block(9, again);
  CHECK(saved == again);
  backend.copy_block(2, 11);
  backend.save_block(11, copied);
  CHECK(saved == copied);
  CHECK_THROWS_AS(backend.save_block(16, saved), Error);
  std::vector<std::byte> short_buf(bytes - 1);
  CHECK_THROWS_AS(backend.load_block(0, short_buf), Error);
}

TEST_CASE("Engine runs a workload on the GPU and its first tokens match the CPU", "[cuda][model]") {
  CHUNKWISE_REQUIRE_MODEL(model);
  auto run = [&](std::shared_ptr<const BackendProvider> device) {
    EngineConfig config;
    config.session.kv_blocks = 512;
    config.session.backend = std::move(device);
    Engine engine(model, config);
    for (int i = 0; i < 12; ++i) {
      Request r;
      r.prompt_text = "Question " + std::to_string(i) + ": name a colour and a fruit.";
      r.max_new_tokens = 8;
      r.stop_at_eos = false;
      r.label = std::to_string(i);
      engine.submit(std::move(r));
    }
    while (engine.has_work()) engine.step();
    std::map<std::string, std::vector<TokenId>> out;
    for (const FinishedRequest& f : engine.take_finished()) out[f.label] = f.output_tokens;
    return out;
  };
  const auto cpu = run(nullptr);
  for (const cuda::DType dtype : {cuda::DType::kBF16, cuda::DType::kF16}) {
    const auto gpu = run(cuda::backend_provider(0, dtype));
    REQUIRE(gpu.size() == 12);
    int first_same = 0;
    for (const auto& [label, tokens] : gpu) {
      REQUIRE(!tokens.empty());
      first_same += tokens.front() == cpu.at(label).front() ? 1 : 0;
    }
    std::printf("Engine on the GPU, %s: %d of 12 first tokens equal the CPU's\n",
                std::string(cuda::to_string(dtype)).c_str(), first_same);
    CHECK(first_same >= 11);
  }
}
