// `chunkwise batch`: runs a workload (docs/formats.md) through one InferenceSession, honouring
// arrival times, and reports per-request results and the run's statistics.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "chunkwise/core/error.hpp"
#include "chunkwise/sched/engine.hpp"
#include "chunkwise/sched/workload.hpp"
#include "commands.hpp"

namespace chunkwise::cli {

namespace {

using nlohmann::json;

// Linear interpolation between closest ranks (NumPy's default).
double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<std::size_t>(rank);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

json percentiles(const std::vector<double>& v) {
  return json{{"p50", percentile(v, 50)}, {"p90", percentile(v, 90)}, {"p99", percentile(v, 99)}};
}

struct Outcome {
  std::optional<FinishedRequest> done;
  std::string error;
};

void progress(std::size_t done, std::size_t total, std::int64_t tokens, double seconds) {
  constexpr int kWidth = 30;
  const int fill = total == 0 ? kWidth : static_cast<int>(kWidth * done / total);
  std::fprintf(stderr, "\r[%.*s%*s] %zu/%zu requests  %.0f tok/s ", fill, "##############################",
               kWidth - fill, "", done, total, seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0);
  std::fflush(stderr);
}

// Poisson arrivals at `rate` requests per second in workload order (online serving mode).
void poisson_arrivals(std::vector<WorkloadItem>& items, double rate, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  double t = 0;
  for (WorkloadItem& item : items) {
    item.arrival_s = t;
    t += gap(rng);
  }
}

}  // namespace

int cmd_batch(const std::vector<std::string>& argv) {
  std::set<std::string> options = kCommonOptions;
  options.insert({"workload", "out", "stats-json", "show", "max-batch-tokens", "max-seqs", "batching",
                  "token-budget", "eviction", "retention-s", "half-life-s", "poisson-rate", "arrival-seed",
                  "slo-ttft", "slo-tbt", "sparse"});
  options.insert(kReuseOptions.begin(), kReuseOptions.end());
  const Args args(argv, options, {"no-progress"});
  std::vector<WorkloadItem> items = read_workload(args.required("workload"));
  const long long show = args.integer("show", 3);
  check(show >= 0, ErrorCode::kInvalidArgument, "--show must be >= 0");
  if (args.get("poisson-rate")) {
    const double rate = args.number("poisson-rate", 1.0);
    check(rate > 0 && std::isfinite(rate), ErrorCode::kInvalidArgument, "--poisson-rate must be > 0");
    poisson_arrivals(items, rate, static_cast<std::uint64_t>(args.integer("arrival-seed", 0)));
  }
  const double slo_ttft = args.number("slo-ttft", 0.0);
  const double slo_tbt = args.number("slo-tbt", 0.0);
  check(slo_ttft >= 0 && slo_tbt >= 0, ErrorCode::kInvalidArgument, "--slo-ttft and --slo-tbt must be >= 0");

  EngineConfig ec;
  ec.session = session_config_from_args(args);
  ec.session.max_batch_tokens =
      static_cast<int>(args.integer("max-batch-tokens", ec.session.max_batch_tokens));
  ec.session.max_sequences = static_cast<int>(args.integer("max-seqs", ec.session.max_sequences));
  ec.batching = args.str("batching", ec.batching);
  const long long budget = args.integer("token-budget", 0);
  check(budget >= 0 && budget <= (1 << 20), ErrorCode::kInvalidArgument,
        "--token-budget must be in [0, 2^20]");
  ec.token_budget = static_cast<int>(budget);
  ec.eviction = args.str("eviction", ec.eviction);
  ec.sparse = args.str("sparse", ec.sparse);
  reuse_config_from_args(args, ec);
  ec.retention_s = args.number("retention-s", ec.retention_s);
  ec.half_life_s = args.number("half-life-s", ec.half_life_s);
  // Time zero (arrivals, TTFT, wall) is when the engine is ready: loading the model and putting its
  // weights on the device is reported apart, as load_s, as the peers' set-up is.
  const auto load_start = std::chrono::steady_clock::now();
  auto start = load_start;
  ec.session.clock = [&start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  auto model = load_model_from_args(args);
  Engine session(model, ec);
  start = std::chrono::steady_clock::now();
  const double load_s = std::chrono::duration<double>(start - load_start).count();
  const SessionConfig& config = ec.session;

  // Submit in arrival order; the workload's own order is kept for the results file.
  std::vector<std::size_t> order(items.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return items[a].arrival_s < items[b].arrival_s; });
  std::map<std::string, Outcome> outcomes;
  std::map<std::string, double> arrival;
  const bool show_progress = !args.flag("no-progress") && isatty(fileno(stderr)) != 0;
  std::size_t next = 0, completed = 0;
  std::int64_t tokens_done = 0;
  while (next < order.size() || session.has_work()) {
    for (; next < order.size() && items[order[next]].arrival_s <= session.now(); ++next) {
      const WorkloadItem& item = items[order[next]];
      arrival[item.request.label] = item.arrival_s;
      try {
        session.submit(item.request);
      } catch (const Error& e) {
        outcomes[item.request.label].error = e.what();
        ++completed;
      }
    }
    if (!session.has_work()) {
      if (next < order.size()) {
        const double wait = items[order[next]].arrival_s - session.now();
        if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
      }
      continue;
    }
    const StepResult step = session.step();
    tokens_done += step.rows;
    for (FinishedRequest& f : session.take_finished()) {
      ++completed;
      outcomes[f.label].done = std::move(f);
    }
    if (show_progress) progress(completed, items.size(), tokens_done, session.now());
  }
  const double wall = session.now();
  if (show_progress) std::fputc('\n', stderr);

  // Per-request results, in workload order.
  std::vector<double> ttft, tbt;
  std::int64_t prompt_tokens = 0, output_tokens = 0, computed = 0, errors = 0;
  std::int64_t within_ttft = 0, within_tbt = 0, within_both = 0;
  std::ofstream out;
  if (auto path = args.get("out")) {
    out.open(*path);
    check(static_cast<bool>(out), ErrorCode::kIo, "cannot write '" + *path + "'");
  }
  for (const WorkloadItem& item : items) {
    const std::string& id = item.request.label;
    const Outcome& o = outcomes.at(id);
    json line{{"id", id}};
    if (!o.done) {
      ++errors;
      line.update(json{{"output_tokens", json::array()},
                       {"output_text", ""},
                       {"ttft_s", nullptr},
                       {"finish_reason", "error"},
                       {"error", o.error}});
    } else {
      const FinishedRequest& f = *o.done;
      const double first = f.timings.first_token_s - arrival.at(id);
      ttft.push_back(first);
      for (std::size_t t = 1; t < f.timings.token_s.size(); ++t)
        tbt.push_back(f.timings.token_s[t] - f.timings.token_s[t - 1]);
      // SLOs per request: TTFT, and the mean gap between its tokens (time per output token).
      const std::size_t n = f.timings.token_s.size();
      const double mean_gap =
          n > 1 ? (f.timings.token_s[n - 1] - f.timings.token_s[0]) / static_cast<double>(n - 1) : 0;
      const bool ttft_ok = slo_ttft <= 0 || first <= slo_ttft;
      const bool tbt_ok = slo_tbt <= 0 || mean_gap <= slo_tbt;
      within_ttft += ttft_ok ? 1 : 0;
      within_tbt += tbt_ok ? 1 : 0;
      within_both += ttft_ok && tbt_ok ? 1 : 0;
      prompt_tokens += static_cast<std::int64_t>(f.prompt_tokens.size());
      output_tokens += static_cast<std::int64_t>(f.output_tokens.size());
      computed += f.prompt_tokens_computed;
      line.update(json{{"output_tokens", f.output_tokens},
                       {"output_text", f.output_text},
                       {"ttft_s", first},
                       {"e2e_s", f.timings.finished_s - arrival.at(id)},
                       {"finish_reason", to_string(f.reason)},
                       {"prompt_tokens", f.prompt_tokens.size()},
                       {"prompt_tokens_cached", f.prompt_tokens_cached},
                       {"preemptions", f.preemptions}});
    }
    if (out.is_open()) out << line.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
  }

  const SessionMetrics& m = session.metrics();
  const KvMetrics& kvm = session.kv_metrics();
  const KvUsage usage = session.kv_usage();
  const double prefill_tps = m.prefill_s > 0 ? static_cast<double>(m.prefill_tokens) / m.prefill_s : 0;
  const double decode_tps = m.decode_s > 0 ? static_cast<double>(m.decode_tokens) / m.decode_s : 0;
  const auto ran = static_cast<double>(std::max<std::int64_t>(1, static_cast<std::int64_t>(ttft.size())));
  const json slo{{"ttft_s", slo_ttft},
                 {"tbt_s", slo_tbt},
                 {"ttft_attained", static_cast<double>(within_ttft) / ran},
                 {"tbt_attained", static_cast<double>(within_tbt) / ran},
                 {"attained", static_cast<double>(within_both) / ran}};
  const json stats{{"requests", items.size()},
                   {"requests_failed", errors},
                   {"prompt_tokens", prompt_tokens},
                   {"prompt_tokens_computed", computed},
                   {"output_tokens", output_tokens},
                   {"wall_s", wall},
                   {"load_s", load_s},
                   {"tokens_per_s", wall > 0 ? static_cast<double>(prompt_tokens + output_tokens) / wall : 0},
                   {"output_tokens_per_s", wall > 0 ? static_cast<double>(output_tokens) / wall : 0},
                   {"prefill_tokens_per_s", prefill_tps},
                   {"decode_tokens_per_s", decode_tps},
                   {"ttft_s", percentiles(ttft)},
                   {"tbt_s", percentiles(tbt)},
                   {"peak_kv_blocks", m.kv_blocks_peak},
                   {"steps", m.steps},
                   {"preemptions", m.preemptions},
                   {"slo", slo},
                   {"sparse",
                    {{"masks", m.sparse.selections},
                     {"dense_fallbacks", m.sparse.dense_fallbacks},
                     {"density", m.sparse.density()},
                     {"mask_building_s", m.sparse.select_s}}},
                   {"kv",
                    {{"block_size", config.block_size},
                     {"total_blocks", m.kv_blocks_total},
                     {"peak_blocks", m.kv_blocks_peak},
                     {"prefix_caching", config.prefix_caching},
                     {"prefix_queries", kvm.prefix_queries},
                     {"prefix_query_tokens", kvm.prefix_query_tokens},
                     {"prefix_hit_tokens", kvm.prefix_hit_tokens},
                     {"prefix_hit_rate", kvm.hit_rate()},
                     {"host_hit_tokens", kvm.host_hit_tokens},
                     {"evictions", kvm.evictions},
                     {"host_saves", kvm.host_saves},
                     {"cow_copies", kvm.cow_copies},
                     {"preemptions", m.preemptions},
                     {"swap_preemptions", m.swap_preemptions},
                     {"recomputed_tokens", m.recomputed_tokens},
                     {"blocks_free", usage.free},
                     {"blocks_cached", usage.cached},
                     {"blocks_in_use", usage.in_use}}},
                   {"policies",
                    {{"batching", ec.batching},
                     {"token_budget", session.config().token_budget},
                     {"eviction", ec.eviction},
                     {"sparse", ec.sparse},
                     {"reuse", ec.reuse},
                     {"recompute_ratio", ec.recompute_ratio}}},
                   {"reuse",
                    {{"prompts", m.reuse.requests},
                     {"chunks_stored", m.reuse.chunks_stored},
                     {"chunks_loaded", m.reuse.chunks_loaded},
                     {"device_hits", m.reuse.device_hits},
                     {"chunks_missed", m.reuse.chunks_missed},
                     {"tokens_loaded", m.reuse.tokens_loaded},
                     {"tokens_recomputed", m.reuse.tokens_recomputed},
                     {"fill_s", m.reuse.fill_s},
                     {"load_s", m.reuse.load_s}}},
                   {"model", model->source()},
                   {"device", ec.session.backend ? ec.session.backend->name() : "cpu"}};
  if (auto path = args.get("stats-json")) {
    std::ofstream s(*path);
    check(static_cast<bool>(s), ErrorCode::kIo, "cannot write '" + *path + "'");
    s << stats.dump(2) << '\n';
  }

  // A few completions, then the summary table.
  long long shown = 0;
  for (const WorkloadItem& item : items) {
    if (shown >= show) break;
    const Outcome& o = outcomes.at(item.request.label);
    if (!o.done) continue;
    std::string prompt = item.request.prompt_text;
    if (!item.request.segments.empty()) prompt = item.request.segments.back().text;  // the question
    if (prompt.size() > 160) prompt = "..." + prompt.substr(prompt.size() - 157);
    std::printf("--- %s\n> %s\n%s\n\n", item.request.label.c_str(), prompt.c_str(),
                o.done->output_text.c_str());
    ++shown;
  }
  std::printf("%-28s %lld (%lld failed)\n", "requests", static_cast<long long>(items.size()),
              static_cast<long long>(errors));
  std::printf("%-28s %lld\n", "prompt tokens", static_cast<long long>(prompt_tokens));
  std::printf("%-28s %lld\n", "prompt tokens computed", static_cast<long long>(computed));
  std::printf("%-28s %lld\n", "generated tokens", static_cast<long long>(output_tokens));
  std::printf("%-28s %.2f s\n", "load time", load_s);
  std::printf("%-28s %.2f s\n", "wall time", wall);
  std::printf("%-28s %.1f tok/s\n", "prefill throughput", prefill_tps);
  std::printf("%-28s %.1f tok/s\n", "decode throughput", decode_tps);
  std::printf("%-28s p50 %.3f s   p99 %.3f s\n", "time to first token", percentile(ttft, 50),
              percentile(ttft, 99));
  std::printf("%-28s p50 %.4f s  p99 %.4f s\n", "time between tokens", percentile(tbt, 50),
              percentile(tbt, 99));
  if (slo_ttft > 0 || slo_tbt > 0)
    std::printf("%-28s %.1f%% of requests (TTFT <= %g s: %.1f%%, mean TBT <= %g s: %.1f%%)\n", "within SLO",
                100.0 * slo["attained"].get<double>(), slo_ttft, 100.0 * slo["ttft_attained"].get<double>(),
                slo_tbt, 100.0 * slo["tbt_attained"].get<double>());
  std::printf("%-28s %d of %d (block %d tokens)\n", "peak KV blocks", m.kv_blocks_peak, m.kv_blocks_total,
              config.block_size);
  std::printf("%-28s %s, %lld queries, %lld of %lld tokens hit (%.1f%%)\n", "prefix cache",
              config.prefix_caching ? "on" : "off", static_cast<long long>(kvm.prefix_queries),
              static_cast<long long>(kvm.prefix_hit_tokens), static_cast<long long>(kvm.prefix_query_tokens),
              100.0 * kvm.hit_rate());
  std::printf("%-28s %s: %lld evictions, %lld from host tier\n", "eviction", ec.eviction.c_str(),
              static_cast<long long>(kvm.evictions), static_cast<long long>(kvm.host_hit_tokens));
  std::printf("%-28s %lld (%lld swapped), %lld tokens recomputed\n", "preemptions",
              static_cast<long long>(m.preemptions), static_cast<long long>(m.swap_preemptions),
              static_cast<long long>(m.recomputed_tokens));
  if (m.sparse.selections > 0)
    std::printf("%-28s %s: density %.3f over %lld masks (%lld dense), mask building %.2f s\n",
                "sparse attention", ec.sparse.c_str(), m.sparse.density(),
                static_cast<long long>(m.sparse.selections), static_cast<long long>(m.sparse.dense_fallbacks),
                m.sparse.select_s);
  if (m.reuse.requests > 0)
    std::printf(
        "%-28s %s: %lld prompts, %lld chunks loaded, %lld missed, %lld stored, %lld of %lld loaded "
        "tokens recomputed\n",
        "chunk reuse", ec.reuse.c_str(), static_cast<long long>(m.reuse.requests),
        static_cast<long long>(m.reuse.chunks_loaded), static_cast<long long>(m.reuse.chunks_missed),
        static_cast<long long>(m.reuse.chunks_stored), static_cast<long long>(m.reuse.tokens_recomputed),
        static_cast<long long>(m.reuse.tokens_loaded));
  if (session.chunk_store() != nullptr) session.chunk_store()->flush();
  return errors == 0 ? 0 : 3;
}

}  // namespace chunkwise::cli
