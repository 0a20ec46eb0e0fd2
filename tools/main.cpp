// chunkwise: the command-line tool. Every failure prints one line "chunkwise: error: ..." and
// exits non-zero; nothing here may crash on bad input.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/core/error.hpp"
#include "commands.hpp"

#ifdef CHUNKWISE_HAS_CUDA
#include "chunkwise/cuda/cuda_backend.hpp"
#include "chunkwise/cuda/device.hpp"
#endif

namespace chunkwise::cli {

namespace {
constexpr const char* kUsage = R"(usage: chunkwise <command> [options]

commands:
  run     --prompt TEXT [--chat] | --segment KIND:TEXT|KIND:@FILE ...  [--max-tokens N] [--temperature T]
          [--top-k K] [--top-p P] [--seed S] [--sparse SPEC] [chunk reuse options]
  batch   --workload FILE.jsonl [--out results.jsonl] [--stats-json FILE] [--show N] [--no-progress]
          [--max-batch-tokens N] [--max-seqs N]
          [--batching prefill-first|stall-free|prefix-grouped|packed] [--token-budget N]
          [--eviction lru|prefix-lifetime|cost-aware|priority] [--retention-s S] [--half-life-s S]
          [--poisson-rate R] [--arrival-seed N] [--slo-ttft S] [--slo-tbt S] [--sparse SPEC]
          [chunk reuse options]
  logits  --text TEXT --out FILE.npy [--chat] [--sparse SPEC] [--chunk N]
  make-model --shape llama3-8b|llama3-1b|smollm2-135m|tiny --out DIR [--seed N] [--dtype bf16|f16|f32]
          [--force] [--with-eos] [--shard-mb N] [--threads N]   (random weights, safetensors folder)
  tune-sparse --out FILE.json [--text-file FILE] [--tokens N] [--target-density D] [--budget B]
          [--min-recall R] (per-head vertical-slash sizes from one forward pass over a calibration
          text; default bench/sparse/calibration.txt, 8000 tokens, density 0.2, B uncapped)
  eval-sparse [--policies "SPEC;SPEC;..."] [--lengths 2048,4096,8184] [--depths 0.1,...] [--samples N]
          [--tasks passkey,needle] [--haystack FILE] [--fidelity-rows N] [--repeat N] [--prefill-chunk N]
          [--out-json FILE] [--no-retrieval] [--no-fidelity] [--no-timing]
          (quality and cost of sparse prefill)
  eval-reuse [--chunks 4,8,16] [--chunk-tokens 256,512] [--questions N] [--policies full,blend,adaptive-blend]
          [--recompute-ratio R] [--max-tokens N] [--corpus FILE] [--filler FILE] [--seed N]
          [--chunk-device-mb N] [--chunk-pinned-mb N] [--load-control on|off] [--out-json FILE]
          [--no-quality]
          (quality and time to first token of chunk reuse on RAG prompts, against a full prefill)

chunk reuse (run, batch; prompts given in segments: --segment, or "segments" in a workload):
  --reuse prefix|full|blend|blend-gradual|adaptive-blend   (default prefix: no chunk reuse)
  --recompute-ratio R   share of each reused chunk recomputed (blend, adaptive-blend; default 0.15)
  --chunk-store DIR     disk tier of the chunk store, kept across runs (default: RAM only)
  --chunk-store-mb N    host RAM tier (default 1024)     --chunk-disk-mb N   disk tier (default 8192)
  --chunk-device-mb N   GPU tier (default 0: none)       --fill-chunk-store on|off   (default on)
  --chunk-pinned-mb N   GPU tier's pinned host level, copied over the host link a few layers at
                        a time under the forward (default 0: none)
  --load-control on|off   compute a chunk held only in RAM or on disk when that is measured to be
                        faster than loading its KV (CacheBlend's loading controller; default off)

sparse prefill (--sparse SPEC, default dense): NAME[:key=value,...] with NAME one of
  dense, streaming (sink, window), vertical-slash (config=FILE, vertical, slash, last_queries),
  block-topk (top_k), flex-prefill (gamma, tau, min_budget, max_budget); every policy also takes
  tile=64|128, min_kv_len=N (shorter chunks stay dense) and dense_layers=L1/L2/...

common options:
  --model PATH        GGUF file or safetensors folder (default: the model fetched by scripts/setup)
  --device cpu|cuda[:N]  backend (default cpu)
  --precision bf16|fp16  CUDA storage type of weights, KV cache and GEMM inputs (default bf16;
                      fp32 accumulation either way; the CPU computes in fp32 and takes only bf16)
  --threads N         CPU threads (default: all cores)
  --block-size N      KV block size in tokens (default 16)
  --kv-mb N           KV cache budget in MiB (default 1024)
  --kv-blocks N       KV cache size in blocks (overrides --kv-mb)
  --prefix-cache on|off          reuse cached KV of shared prefixes (default on)
  --host-cache-blocks N          host-RAM tier for evicted prefix blocks (default 0: none)
  --preemption recompute|swap    what a preempted request does (default recompute)
  --swap-blocks N                host-RAM swap space in blocks (default: the pool's size)
)";
}  // namespace

std::shared_ptr<const BackendProvider> backend_from_args(const Args& args) {
  const std::string device = args.str("device", "cpu");
  const std::string precision = args.str("precision", "bf16");
  check(precision == "bf16" || precision == "fp16", ErrorCode::kInvalidArgument,
        "--precision must be bf16 or fp16, got '" + precision + "'");
  if (device == "cpu") {
    check(precision == "bf16", ErrorCode::kInvalidArgument,
          "--precision " + precision + " needs --device cuda: the CPU backend computes in fp32");
    return cpu_backend_provider();
  }
  // The name is checked the same way whether or not this build has the CUDA backend.
  const std::string n = device.rfind("cuda", 0) == 0 ? device.substr(4) : std::string("?");
  check(n.empty() || (n.size() >= 2 && n.size() <= 4 && n[0] == ':' &&
                      n.find_first_not_of("0123456789", 1) == std::string::npos),
        ErrorCode::kInvalidArgument, "--device must be cpu, cuda or cuda:N, got '" + device + "'");
#ifdef CHUNKWISE_HAS_CUDA
  const int index = n.empty() ? 0 : std::stoi(n.substr(1));
  const int visible = cuda::device_count();
  check(index < visible, ErrorCode::kBackend,
        "--device " + device + ": " + std::to_string(visible) + " CUDA device(s) visible");
  return cuda::backend_provider(index, precision == "fp16" ? cuda::DType::kF16 : cuda::DType::kBF16);
#else
  throw Error(ErrorCode::kUnsupported,
              "--device " + device + ": this build has no CUDA backend; use --device cpu");
#endif
}

std::shared_ptr<const Model> load_model_from_args(const Args& args) {
  (void)backend_from_args(args);  // a bad --device fails before the model loads
  const long long threads = args.integer("threads", 0);
  check(threads >= 0 && threads <= 1024, ErrorCode::kInvalidArgument, "--threads must be in [0, 1024]");
  cpu::set_num_threads(static_cast<int>(threads));
  const std::filesystem::path path =
      args.get("model") ? std::filesystem::path(*args.get("model")) : default_model_path();
  check(std::filesystem::exists(path), ErrorCode::kIo,
        "model '" + path.string() +
            "' not found (run scripts/setup to fetch the default model, or pass --model)");
  return Model::load(path);
}

void reuse_config_from_args(const Args& args, EngineConfig& c) {
  c.reuse = args.str("reuse", c.reuse);
  if (args.get("recompute-ratio")) c.recompute_ratio = args.number("recompute-ratio", 0.0);
  check(!args.get("recompute-ratio") || c.recompute_ratio >= 0, ErrorCode::kInvalidArgument,
        "--recompute-ratio must be in [0, 1]");
  auto mb = [&](const char* name, std::size_t fallback) {
    const long long v = args.integer(name, static_cast<long long>(fallback));
    check(v >= 0 && v <= (1LL << 24), ErrorCode::kInvalidArgument,
          std::string("--") + name + " must be in [0, 16777216]");
    return static_cast<std::size_t>(v);
  };
  c.chunk_store_mb = mb("chunk-store-mb", c.chunk_store_mb);
  c.chunk_disk_mb = mb("chunk-disk-mb", c.chunk_disk_mb);
  c.session.chunk_device_mb = mb("chunk-device-mb", c.session.chunk_device_mb);
  c.session.chunk_pinned_mb = mb("chunk-pinned-mb", c.session.chunk_pinned_mb);
  c.chunk_store_dir = args.str("chunk-store", c.chunk_store_dir);
  const std::string fill = args.str("fill-chunk-store", "on");
  check(fill == "on" || fill == "off", ErrorCode::kInvalidArgument, "--fill-chunk-store must be on or off");
  c.session.fill_chunk_store = fill == "on";
  const std::string control = args.str("load-control", "off");
  check(control == "on" || control == "off", ErrorCode::kInvalidArgument, "--load-control must be on or off");
  c.session.reuse_load_control = control == "on";
  const bool store_options = args.get("chunk-store") || args.get("chunk-store-mb") ||
                             args.get("chunk-disk-mb") || args.get("chunk-device-mb") ||
                             args.get("chunk-pinned-mb") || args.get("fill-chunk-store") ||
                             args.get("load-control");
  check(c.reuse != "prefix" || !store_options, ErrorCode::kInvalidArgument,
        "the chunk-store options need --reuse full, blend, blend-gradual or adaptive-blend");
}

void print_reuse_stats(const Engine& engine) {
  const ReuseStats& r = engine.metrics().reuse;
  if (r.requests == 0) return;
  std::fprintf(
      stderr,
      "[reuse %s: %lld prompts, %lld chunks loaded (%lld from the GPU's chunk tier), %lld missed, %lld "
      "stored, %lld computed instead (load control); %lld of %lld loaded tokens recomputed; fill %.3f s, "
      "load %.3f s]\n",
      engine.config().reuse.c_str(), static_cast<long long>(r.requests),
      static_cast<long long>(r.chunks_loaded), static_cast<long long>(r.device_hits),
      static_cast<long long>(r.chunks_missed), static_cast<long long>(r.chunks_stored),
      static_cast<long long>(r.chunks_computed), static_cast<long long>(r.tokens_recomputed),
      static_cast<long long>(r.tokens_loaded), r.fill_s, r.load_s);
}

SessionConfig session_config_from_args(const Args& args) {
  SessionConfig c;
  c.backend = backend_from_args(args);
  const long long bs = args.integer("block-size", c.block_size);
  const long long mb = args.integer("kv-mb", static_cast<long long>(c.kv_memory_mb));
  check(bs >= 1 && bs <= 1024, ErrorCode::kInvalidArgument, "--block-size must be in [1, 1024]");
  check(mb >= 1 && mb <= (1LL << 24), ErrorCode::kInvalidArgument, "--kv-mb must be in [1, 16777216]");
  c.block_size = static_cast<int>(bs);
  c.kv_memory_mb = static_cast<std::size_t>(mb);
  const long long blocks = args.integer("kv-blocks", 0);
  check(blocks >= 0 && blocks <= (1LL << 30), ErrorCode::kInvalidArgument,
        "--kv-blocks must be in [0, 2^30] (0: size from --kv-mb)");
  c.kv_blocks = static_cast<int>(blocks);
  const std::string prefix = args.str("prefix-cache", "on");
  check(prefix == "on" || prefix == "off", ErrorCode::kInvalidArgument, "--prefix-cache must be on or off");
  c.prefix_caching = prefix == "on";
  const long long host = args.integer("host-cache-blocks", 0);
  check(host >= 0 && host <= (1LL << 30), ErrorCode::kInvalidArgument,
        "--host-cache-blocks must be in [0, 2^30]");
  c.host_cache_blocks = static_cast<int>(host);
  const std::string preemption = args.str("preemption", "recompute");
  check(preemption == "recompute" || preemption == "swap", ErrorCode::kInvalidArgument,
        "--preemption must be recompute or swap");
  c.preemption = preemption == "swap" ? Preemption::kSwap : Preemption::kRecompute;
  const long long swap = args.integer("swap-blocks", 0);
  check(swap >= 0 && swap <= (1LL << 30), ErrorCode::kInvalidArgument, "--swap-blocks must be in [0, 2^30]");
  c.swap_blocks = static_cast<int>(swap);
  return c;
}

}  // namespace chunkwise::cli

int main(int argc, char** argv) {
  using namespace chunkwise::cli;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  const std::vector<std::string> rest(argv + 2, argv + argc);
  try {
    if (cmd == "run") return cmd_run(rest);
    if (cmd == "batch") return cmd_batch(rest);
    if (cmd == "logits") return cmd_logits(rest);
    if (cmd == "make-model") return cmd_make_model(rest);
    if (cmd == "tune-sparse") return cmd_tune_sparse(rest);
    if (cmd == "eval-sparse") return cmd_eval_sparse(rest);
    if (cmd == "eval-reuse") return cmd_eval_reuse(rest);
    std::fprintf(stderr, "chunkwise: error: unknown command '%s'\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const chunkwise::Error& e) {
    std::fprintf(stderr, "chunkwise: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chunkwise: error: %s\n", e.what());
    return 1;
  }
}
