// `chunkwise tune-sparse`: the offline per-head pattern search of VerticalSlashAttention
// (MInference's kernel-aware search, METHODS.md 2.2). One dense forward pass over a calibration
// text; at every layer a search selector sees the probe (post-RoPE queries and keys) and, per head
// and per vertical share f, sizes the candidate (vertical, slash) = (f*B, (1-f)*B) to the kernel
// cost --target-density: B is bisected (in log scale) on the head's mask density (mask_cost of the
// head's own rows), so that the density comes as close to the target as it can without passing it.
// Candidates of equal cost are then ranked by attention recall on sampled query rows, and each head
// keeps its best. The forward itself stays exact (the selector returns the dense mask), and the
// winners are written as a vertical-slash config.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <sstream>
#include <thread>

#include "chunkwise/backend/cpu/ops.hpp"
#include "chunkwise/backend/prompt_logits.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/policy/sparse/detail/probe_estimates.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"
#include "chunkwise/policy/sparse/vertical_slash_attention.hpp"
#include "commands.hpp"

#ifndef CHUNKWISE_SOURCE_DIR
#define CHUNKWISE_SOURCE_DIR "."
#endif

namespace chunkwise::cli {

namespace {

constexpr int kTile = 64;
constexpr int kScoredRows = 64;
constexpr int kSearchSteps = 8;  // bisection steps on B per (head, share)
constexpr int kMinTotal = 64;    // the smallest B tried (the forced columns and diagonals stay anyway)
constexpr double kTieTolerance = 1e-6;
constexpr double kShares[] = {0.03, 0.25, 0.5, 0.75, 0.97};  // vertical share f of the candidates
constexpr std::size_t kNumShares = std::size(kShares);
constexpr VerticalSlashSizes kDense{0, 0, true};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The candidate of share f and total size B: (round(f*B), B - round(f*B)).
VerticalSlashSizes split(double f, int total) {
  const int v = static_cast<int>(std::lround(f * total));
  return {v, total - v, false};
}

// Head h's rows of a mask, as a one-head mask.
BlockMask head_rows(const BlockMask& m, int h) {
  BlockMask out = m;
  out.n_heads = 1;
  if (m.dense) return out;
  const auto r0 = static_cast<std::size_t>(h) * static_cast<std::size_t>(m.n_qtiles);
  const auto r1 = r0 + static_cast<std::size_t>(m.n_qtiles);
  const auto slice = [&](const std::vector<std::int32_t>& ptr, const std::vector<std::int32_t>& index,
                         std::vector<std::int32_t>& out_ptr, std::vector<std::int32_t>& out_index) {
    out_ptr.assign(ptr.begin() + static_cast<std::ptrdiff_t>(r0),
                   ptr.begin() + static_cast<std::ptrdiff_t>(r1) + 1);
    for (auto& x : out_ptr) x -= ptr[r0];
    out_index.assign(index.begin() + ptr[r0], index.begin() + ptr[r1]);
  };
  slice(m.row_ptr, m.col_index, out.row_ptr, out.col_index);
  if (m.has_columns()) slice(m.column_ptr, m.column_index, out.column_ptr, out.column_index);
  return out;
}

// Head h's share of the causal tiles its mask computes (a column counts 1/tile), as mask_cost
// counts it.
double head_density(const BlockMask& m, int h) {
  return mask_cost(head_rows(m, h)).density();
}

// Sets the CPU ops (Eigen included) to one thread while it lives; the count is restored after.
class SerialOps {
 public:
  SerialOps() : saved_(cpu::num_threads()) { cpu::set_num_threads(1); }
  ~SerialOps() { cpu::set_num_threads(saved_); }
  SerialOps(const SerialOps&) = delete;
  SerialOps& operator=(const SerialOps&) = delete;

 private:
  int saved_;
};

// Sees every layer's probe, sizes and scores every share's candidate for every head, and changes
// nothing.
class SearchSelector final : public SparseSelector {
 public:
  SearchSelector(double target, int max_total, int threads)
      : target_(target), max_total_(max_total), threads_(std::max(threads, 1)) {}
  [[nodiscard]] int tile() const override { return kTile; }
  [[nodiscard]] int min_kv_len() const override { return 0; }

  // [share][head]: the sized candidate, its total size B, its recall and density; empty layers
  // were never probed.
  struct Layer {
    std::vector<std::vector<VerticalSlashSizes>> sizes;
    std::vector<std::vector<int>> total;
    std::vector<std::vector<double>> recall, density;
    int rows = 0, first_row = 0, last_row = 0;  // scored rows (positions)
  };
  [[nodiscard]] const std::vector<Layer>& layers() const { return layers_; }
  [[nodiscard]] double search_s() const { return search_s_; }
  [[nodiscard]] long long selects() const { return selects_; }

  BlockMask select(const AttentionProbe& p) override {
    const auto t0 = Clock::now();
    check(p.layer >= 0 && p.layer < p.n_layers, ErrorCode::kInvalidArgument, "tune-sparse: bad probe layer");
    if (layers_.empty()) layers_.resize(static_cast<std::size_t>(p.n_layers));
    Layer& out = layers_[static_cast<std::size_t>(p.layer)];
    // Chunk rows at positions >= a quarter of the prompt, evenly spaced, the last one included.
    const int lo = std::max(p.query_begin, p.kv_len / 4) - p.query_begin, hi = p.query_len - 1;
    std::vector<int> rows;
    for (int i = 0; i < kScoredRows && lo <= hi; ++i) {
      const int r =
          kScoredRows == 1
              ? hi
              : lo + static_cast<int>(std::lround(static_cast<double>(hi - lo) * i / (kScoredRows - 1)));
      if (rows.empty() || rows.back() != r) rows.push_back(r);
    }
    const auto nh = static_cast<std::size_t>(p.n_heads);
    out.sizes.assign(kNumShares, std::vector<VerticalSlashSizes>(nh, kDense));
    out.total.assign(kNumShares, std::vector<int>(nh, 0));
    out.recall.assign(kNumShares, std::vector<double>(nh, 1.0));
    out.density.assign(kNumShares, std::vector<double>(nh, 1.0));
    out.rows = static_cast<int>(rows.size());
    out.first_row = rows.empty() ? 0 : p.query_begin + rows.front();
    out.last_row = rows.empty() ? 0 : p.query_begin + rows.back();
    // One task per (share, head), from a shared counter. A task's selects size that head only and
    // keep the others dense, which skips their estimates: the last-query attention of the head is
    // computed once per select, as a lockstep select of every head would.
    const int tasks = static_cast<int>(kNumShares * nh);
    std::atomic<int> next{0};
    std::atomic<long long> selects{0};
    const auto work = [&] {
      for (int t = next++; t < tasks; t = next++) {
        const auto c = static_cast<std::size_t>(t) / nh;
        const int h = static_cast<int>(static_cast<std::size_t>(t) % nh);
        search_head(p, kShares[c], h, rows, out, c, selects);
      }
    };
    const int workers = std::min(threads_, tasks);
    // One thread per worker: the estimate's GEMM would otherwise fork an Eigen/OpenMP team inside
    // every worker, and the teams spin against each other.
    const SerialOps serial;
    std::vector<std::thread> pool;
    for (int w = 1; w < workers; ++w) pool.emplace_back(work);
    work();
    for (auto& th : pool) th.join();
    selects_ += selects.load();
    search_s_ += seconds_since(t0);
    return dense_mask(p, kTile);
  }

 private:
  // Bisects head h's total size B for share f in log scale over [kMinTotal, max_total_]: lo has
  // density <= target (or is the smallest B), hi has density > target (or is past the cap; then
  // the cap itself is tried last). The winner is lo; its mask gives the recall.
  void search_head(const AttentionProbe& p, double f, int h, std::span<const int> rows, Layer& out,
                   std::size_t c, std::atomic<long long>& selects) const {
    VerticalSlashAttention::Params params;
    params.tile = kTile;
    params.fallback.min_kv_len = 0;
    params.config.default_sizes = kDense;
    params.config.heads.assign(static_cast<std::size_t>(p.layer) + 1,
                               std::vector<VerticalSlashSizes>(static_cast<std::size_t>(p.n_heads), kDense));
    auto& sizes = params.config.heads[static_cast<std::size_t>(p.layer)][static_cast<std::size_t>(h)];
    const auto measure = [&](int total) {
      sizes = split(f, total);
      selects++;
      return VerticalSlashAttention(params).select(p);
    };
    int lo = std::min(kMinTotal, max_total_), hi = max_total_ + 1;
    BlockMask best;
    bool have_best = false;
    double best_density = 1.0;
    for (int step = 0; step < kSearchSteps && hi - lo > 1; ++step) {
      const int mid =
          std::clamp(static_cast<int>(std::lround(std::sqrt(static_cast<double>(lo) * hi))), lo + 1, hi - 1);
      BlockMask mask = measure(mid);
      const double d = head_density(mask, h);
      if (d <= target_) {
        lo = mid;
        best = std::move(mask);
        best_density = d;
        have_best = true;
      } else {
        hi = mid;
      }
    }
    if (hi == max_total_ + 1 && lo < max_total_) {  // never over the target: try the cap itself
      BlockMask mask = measure(max_total_);
      const double d = head_density(mask, h);
      if (d <= target_) {
        lo = max_total_;
        best = std::move(mask);
        best_density = d;
        have_best = true;
      }
    }
    if (!have_best) {
      best = measure(lo);
      best_density = head_density(best, h);
    }
    validate(best, p);
    const auto hh = static_cast<std::size_t>(h);
    out.sizes[c][hh] = split(f, lo);
    out.total[c][hh] = lo;
    out.density[c][hh] = best_density;
    out.recall[c][hh] = detail::attention_recall(p, best, h, rows);
  }

  double target_;
  int max_total_;
  int threads_;
  std::vector<Layer> layers_;
  double search_s_ = 0;
  long long selects_ = 0;
};

std::string sizes_text(const VerticalSlashSizes& s) {
  if (s.dense) return "dense";
  char buf[48];
  std::snprintf(buf, sizeof buf, "(%d,%d)", s.vertical, s.slash);
  return buf;
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  check(static_cast<bool>(in), ErrorCode::kInvalidArgument, "cannot read --text-file " + path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string model_name(const Model& model) {
  std::filesystem::path p(model.source());
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().empty() ? model.source() : p.filename().string();
}

}  // namespace

int cmd_tune_sparse(const std::vector<std::string>& argv) {
  const auto t_start = Clock::now();
  std::set<std::string> options = kCommonOptions;
  options.insert({"text-file", "tokens", "target-density", "budget", "min-recall", "out"});
  const Args args(argv, options, {});
  const std::string out = args.required("out");
  const double target = args.number("target-density", 0.2);
  check(target > 0.0 && target <= 1.0, ErrorCode::kInvalidArgument,
        "--target-density must be in (0, 1] (the share of the causal tiles each head computes)");
  const std::optional<std::string> budget_arg = args.get("budget");
  const long long budget_opt = args.integer("budget", 1);
  check(budget_opt >= 1 && budget_opt <= (1 << 24), ErrorCode::kInvalidArgument,
        "--budget must be in [1, 16777216]");
  const double min_recall = args.number("min-recall", 0.0);
  check(min_recall >= 0.0 && min_recall <= 1.0, ErrorCode::kInvalidArgument,
        "--min-recall must be in [0, 1] (0: no dense heads)");
  const std::optional<std::string> tokens_arg = args.get("tokens");
  const long long tokens_opt = args.integer("tokens", 8000);
  check(tokens_opt >= 128, ErrorCode::kInvalidArgument, "--tokens must be >= 128");
  const std::filesystem::path text_path =
      args.get("text-file")
          ? std::filesystem::path(*args.get("text-file"))
          : std::filesystem::path(CHUNKWISE_SOURCE_DIR) / "bench" / "sparse" / "calibration.txt";
  check(args.get("text-file") || std::filesystem::exists(text_path), ErrorCode::kInvalidArgument,
        "no --text-file given and the default calibration text " + text_path.string() + " is not there");
  const std::string text = read_text(text_path);

  auto model = load_model_from_args(args);
  const ModelConfig& mc = model->config();
  check(!tokens_arg || tokens_opt <= mc.max_context, ErrorCode::kInvalidArgument,
        "--tokens " + std::to_string(tokens_opt) + " exceeds the model's context of " +
            std::to_string(mc.max_context));
  std::vector<TokenId> ids = model->tokenizer().encode(text, /*parse_special=*/false);
  const auto available = static_cast<long long>(ids.size());
  long long n = std::min<long long>(tokens_opt, mc.max_context);
  if (available < n) {
    check(!tokens_arg, ErrorCode::kInvalidArgument,
          "--text-file " + text_path.string() + " has " + std::to_string(available) +
              " tokens, fewer than --tokens " + std::to_string(n));
    check(available >= 128, ErrorCode::kInvalidArgument,
          "--text-file " + text_path.string() + " has " + std::to_string(available) +
              " tokens; the search needs at least 128");
    n = available;
  }
  ids.resize(static_cast<std::size_t>(n));
  // The cap on B: --budget, else twice the tokens (every column and every diagonal: no cap).
  const long long budget = budget_arg ? budget_opt : 2 * n;

  std::printf("tune-sparse: %s, %lld tokens of %s (%lld in the text), target density %.3f, B <= %lld\n",
              model_name(*model).c_str(), n, text_path.string().c_str(), available, target, budget);
  std::printf("candidates per head: (vertical,slash) = (f*B, (1-f)*B), f in");
  for (const double f : kShares) std::printf(" %.2f", f);
  std::printf(", B sized to the target density\n");
  std::fflush(stdout);

  SearchSelector search(target, static_cast<int>(budget), cpu::num_threads());
  const auto t_forward = Clock::now();
  (void)prompt_logits(model, ids, kTile, backend_from_args(args).get(), &search, 0, static_cast<int>(n) - 1);
  const double forward_s = seconds_since(t_forward);

  const auto& layers = search.layers();
  check(static_cast<int>(layers.size()) == mc.n_layers, ErrorCode::kBackend,
        "tune-sparse: the backend probed no layer (does it run sparse attention?)");
  for (int l = 0; l < mc.n_layers; ++l)
    check(!layers[static_cast<std::size_t>(l)].recall.empty(), ErrorCode::kBackend,
          "tune-sparse: the backend did not probe layer " + std::to_string(l));

  // Per head: the highest recall among the sized candidates; ties (within kTieTolerance) go to the
  // lower density, then to the earlier share.
  constexpr std::size_t nc = kNumShares;
  const auto nh = static_cast<std::size_t>(mc.n_heads);
  VerticalSlashConfig config;
  config.model = model_name(*model);
  std::vector<std::vector<int>> winner(layers.size(), std::vector<int>(nh, 0));
  std::vector<int> wins(nc + 1, 0);  // the last: dense
  std::vector<std::vector<int>> win_totals(nc);
  double win_recall = 0, win_density = 0, win_min = 1, eff_recall = 0, eff_density = 0;
  int dense_heads = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const auto& layer = layers[l];
    auto& row = config.heads.emplace_back();
    for (std::size_t h = 0; h < nh; ++h) {
      std::size_t best = 0;
      for (std::size_t c = 1; c < nc; ++c) {
        const double d = layer.recall[c][h] - layer.recall[best][h];
        if (d > kTieTolerance || (d >= -kTieTolerance && layer.density[c][h] < layer.density[best][h]))
          best = c;
      }
      const double r = layer.recall[best][h];
      win_recall += r;
      win_density += layer.density[best][h];
      win_min = std::min(win_min, r);
      const bool dense = r < min_recall;
      winner[l][h] = dense ? -1 : static_cast<int>(best);
      wins[dense ? nc : best]++;
      if (!dense) win_totals[best].push_back(layer.total[best][h]);
      dense_heads += dense ? 1 : 0;
      eff_recall += dense ? 1.0 : r;
      eff_density += dense ? 1.0 : layer.density[best][h];
      row.push_back(dense ? kDense : layer.sizes[best][h]);
    }
  }
  // default_sizes (for heads the config does not list): the most common winning share (ties: the
  // earlier; dense last) at the median B of its winners.
  std::size_t common = 0;
  for (std::size_t c = 1; c <= nc; ++c)
    if (wins[c] > wins[common]) common = c;
  if (common == nc) {
    config.default_sizes = kDense;
  } else {
    auto& t = win_totals[common];
    std::nth_element(t.begin(), t.begin() + static_cast<std::ptrdiff_t>(t.size() / 2), t.end());
    config.default_sizes = split(kShares[common], t[t.size() / 2]);
  }
  save_vertical_slash_config(config, out);

  // The table: per layer, each head's winner and its recall.
  const auto total_heads = static_cast<double>(layers.size() * nh);
  const auto& l0 = layers.front();
  std::printf(
      "scored %d query rows per head at positions %d..%d; forward + search %.1f s (search %.1f s, %lld "
      "selects)\n\n",
      l0.rows, l0.first_row, l0.last_row, forward_s, search.search_s(), search.selects());
  std::printf("layer  winner (vertical,slash) recall, per head%s\n",
              min_recall > 0 ? " (dense: best recall below --min-recall)" : "");
  for (std::size_t l = 0; l < layers.size(); ++l) {
    std::printf("%5zu ", l);
    for (std::size_t h = 0; h < nh; ++h) {
      const int w = winner[l][h];
      const std::size_t shown = w < 0 ? 0 : static_cast<std::size_t>(w);
      double r = layers[l].recall[shown][h];
      if (w < 0)
        for (std::size_t c = 0; c < nc; ++c) r = std::max(r, layers[l].recall[c][h]);
      std::printf(" %11s %.3f", w < 0 ? "dense" : sizes_text(layers[l].sizes[shown][h]).c_str(), r);
    }
    std::printf("\n");
  }

  std::printf(
      "\nmean over %zu heads (recall of the exact attention mass; density = share of causal tiles, "
      "target %.3f)\n",
      layers.size() * nh, target);
  std::printf("  per-head winners   recall %.4f (min %.4f)  density %.3f\n", win_recall / total_heads,
              win_min, win_density / total_heads);
  if (dense_heads > 0)
    std::printf("  with %d dense heads recall %.4f              density %.3f\n", dense_heads,
                eff_recall / total_heads, eff_density / total_heads);
  for (std::size_t c = 0; c < nc; ++c) {
    double r = 0, d = 0, mn = 1, v = 0, s = 0;
    int over = 0, capped = 0;
    for (const auto& layer : layers)
      for (std::size_t h = 0; h < nh; ++h) {
        r += layer.recall[c][h];
        d += layer.density[c][h];
        mn = std::min(mn, layer.recall[c][h]);
        v += layer.sizes[c][h].vertical;
        s += layer.sizes[c][h].slash;
        over += layer.density[c][h] > target ? 1 : 0;
        capped += layer.total[c][h] >= budget ? 1 : 0;
      }
    std::printf("  f=%.2f             recall %.4f (min %.4f)  density %.3f  mean (v,s) (%.0f,%.0f)",
                kShares[c], r / total_heads, mn, d / total_heads, v / total_heads, s / total_heads);
    if (over > 0) std::printf("  %d heads over the target at the smallest B", over);
    if (capped > 0) std::printf("  %d heads at the --budget cap", capped);
    std::printf("\n");
  }
  std::printf("winners:");
  for (std::size_t c = 0; c <= nc; ++c)
    if (wins[c] > 0) {
      if (c == nc)
        std::printf(" dense x%d", wins[c]);
      else
        std::printf(" f=%.2f x%d", kShares[c], wins[c]);
    }
  std::printf("; default %s\n", sizes_text(config.default_sizes).c_str());
  std::printf("wrote %s in %.1f s\n", out.c_str(), seconds_since(t_start));
  return 0;
}

}  // namespace chunkwise::cli
