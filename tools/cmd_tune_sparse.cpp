// `chunkwise tune-sparse`: the offline per-head pattern search of VerticalSlashAttention
// (MInference's kernel-aware search, METHODS.md 2.2). One dense forward pass over a calibration
// text; at every layer a search selector sees the probe (post-RoPE queries and keys), builds each
// candidate's vertical-slash mask, scores each head's attention recall on sampled query rows and
// keeps per head the candidate with the highest recall. The forward itself stays exact (the
// selector returns the dense mask), and the winners are written as a vertical-slash config.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
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
constexpr double kTieTolerance = 1e-6;
constexpr double kCandidateShares[] = {0.03, 0.25, 0.5, 0.75, 0.97};

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Equal-budget candidates (v, s) = (round(f*B), B - round(f*B)), duplicates dropped.
std::vector<VerticalSlashSizes> candidates_for(int budget) {
  std::vector<VerticalSlashSizes> out;
  for (const double f : kCandidateShares) {
    const int v = static_cast<int>(std::lround(f * budget));
    const VerticalSlashSizes c{v, budget - v, false};
    if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
  }
  return out;
}

// Head h's share of the causal tiles its mask computes (a column counts 1/tile).
double head_density(const BlockMask& m, int h) {
  if (m.dense) return 1.0;
  double computed = 0, causal = 0;
  for (int j = 0; j < m.n_qtiles; ++j) {
    const auto r = static_cast<std::size_t>(h * m.n_qtiles + j);
    computed += m.row_ptr[r + 1] - m.row_ptr[r];
    if (m.has_columns()) computed += (m.column_ptr[r + 1] - m.column_ptr[r]) / static_cast<double>(m.tile);
    causal += m.first_qtile + j + 1;
  }
  return causal > 0 ? computed / causal : 1.0;
}

// Sees every layer's probe, scores every candidate for every head, and changes nothing.
class SearchSelector final : public SparseSelector {
 public:
  SearchSelector(std::vector<VerticalSlashSizes> candidates, int threads)
      : candidates_(std::move(candidates)), threads_(std::max(threads, 1)) {
    for (const VerticalSlashSizes& c : candidates_) {
      VerticalSlashAttention::Params p;
      p.tile = kTile;
      p.config.default_sizes = c;
      p.fallback.min_kv_len = 0;
      policies_.emplace_back(std::move(p));
    }
  }
  [[nodiscard]] int tile() const override { return kTile; }
  [[nodiscard]] int min_kv_len() const override { return 0; }

  // recall[layer][candidate][head] and density likewise; empty layers were never probed.
  struct Layer {
    std::vector<std::vector<double>> recall, density;
    int rows = 0, first_row = 0, last_row = 0;  // scored rows (positions)
  };
  [[nodiscard]] const std::vector<Layer>& layers() const { return layers_; }
  [[nodiscard]] double search_s() const { return search_s_; }

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
    const auto nc = candidates_.size();
    const auto nh = static_cast<std::size_t>(p.n_heads);
    out.recall.assign(nc, std::vector<double>(nh, 1.0));
    out.density.assign(nc, std::vector<double>(nh, 1.0));
    out.rows = static_cast<int>(rows.size());
    out.first_row = rows.empty() ? 0 : p.query_begin + rows.front();
    out.last_row = rows.empty() ? 0 : p.query_begin + rows.back();
    for (std::size_t c = 0; c < nc; ++c) {
      const BlockMask mask = policies_[c].select(p);  // every head at candidate c
      validate(mask, p);
      // Heads in parallel: each reads the probe and writes its own slots.
      const int workers = std::min(threads_, p.n_heads);
      std::vector<std::thread> pool;
      for (int w = 0; w < workers; ++w)
        pool.emplace_back([&, w] {
          for (int h = w; h < p.n_heads; h += workers) {
            out.recall[c][static_cast<std::size_t>(h)] = detail::attention_recall(p, mask, h, rows);
            out.density[c][static_cast<std::size_t>(h)] = head_density(mask, h);
          }
        });
      for (auto& t : pool) t.join();
    }
    search_s_ += seconds_since(t0);
    return dense_mask(p, kTile);
  }

 private:
  std::vector<VerticalSlashSizes> candidates_;
  std::vector<VerticalSlashAttention> policies_;
  int threads_;
  std::vector<Layer> layers_;
  double search_s_ = 0;
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
  options.insert({"text-file", "tokens", "budget", "min-recall", "out"});
  const Args args(argv, options, {});
  const std::string out = args.required("out");
  const long long budget = args.integer("budget", 1024);
  check(budget >= 1 && budget <= (1 << 24), ErrorCode::kInvalidArgument, "--budget must be in [1, 16777216]");
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

  const std::vector<VerticalSlashSizes> candidates = candidates_for(static_cast<int>(budget));
  std::printf("tune-sparse: %s, %lld tokens of %s (%lld in the text), budget %lld tokens per row\n",
              model_name(*model).c_str(), n, text_path.string().c_str(), available, budget);
  std::printf("candidates (vertical,slash):");
  for (const auto& c : candidates) std::printf(" %s", sizes_text(c).c_str());
  std::printf("\n");
  std::fflush(stdout);

  SearchSelector search(candidates, cpu::num_threads());
  const auto t_forward = Clock::now();
  (void)prompt_logits(model, ids, kTile, backend_from_args(args).get(), &search, 0, static_cast<int>(n) - 1);
  const double forward_s = seconds_since(t_forward);

  const auto& layers = search.layers();
  check(static_cast<int>(layers.size()) == mc.n_layers, ErrorCode::kBackend,
        "tune-sparse: the backend probed no layer (does it run sparse attention?)");
  for (int l = 0; l < mc.n_layers; ++l)
    check(!layers[static_cast<std::size_t>(l)].recall.empty(), ErrorCode::kBackend,
          "tune-sparse: the backend did not probe layer " + std::to_string(l));

  // Per head: the highest recall; ties (within kTieTolerance) go to the lower density, then to
  // the earlier candidate.
  const std::size_t nc = candidates.size();
  const auto nh = static_cast<std::size_t>(mc.n_heads);
  VerticalSlashConfig config;
  config.model = model_name(*model);
  std::vector<std::vector<int>> winner(layers.size(), std::vector<int>(nh, 0));
  std::vector<int> wins(nc + 1, 0);  // the last: dense
  double win_recall = 0, win_density = 0, win_min = 1, eff_recall = 0, eff_density = 0;
  int dense_heads = 0;
  for (std::size_t l = 0; l < layers.size(); ++l) {
    auto& row = config.heads.emplace_back();
    for (std::size_t h = 0; h < nh; ++h) {
      std::size_t best = 0;
      for (std::size_t c = 1; c < nc; ++c) {
        const double d = layers[l].recall[c][h] - layers[l].recall[best][h];
        if (d > kTieTolerance ||
            (d >= -kTieTolerance && layers[l].density[c][h] < layers[l].density[best][h]))
          best = c;
      }
      const double r = layers[l].recall[best][h];
      win_recall += r;
      win_density += layers[l].density[best][h];
      win_min = std::min(win_min, r);
      const bool dense = r < min_recall;
      winner[l][h] = dense ? -1 : static_cast<int>(best);
      wins[dense ? nc : best]++;
      dense_heads += dense ? 1 : 0;
      eff_recall += dense ? 1.0 : r;
      eff_density += dense ? 1.0 : layers[l].density[best][h];
      row.push_back(dense ? VerticalSlashSizes{0, 0, true} : candidates[best]);
    }
  }
  // default_sizes: the most common winner (ties: the earlier candidate; dense last).
  std::size_t common = 0;
  for (std::size_t c = 1; c <= nc; ++c)
    if (wins[c] > wins[common]) common = c;
  config.default_sizes = common == nc ? VerticalSlashSizes{0, 0, true} : candidates[common];
  save_vertical_slash_config(config, out);

  // The table: per layer, each head's winner and its recall.
  const auto total_heads = static_cast<double>(layers.size() * nh);
  const auto& l0 = layers.front();
  std::printf(
      "scored %d query rows per head at positions %d..%d; forward + search %.1f s (search %.1f s)\n\n",
      l0.rows, l0.first_row, l0.last_row, forward_s, search.search_s());
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
      std::printf(" %11s %.3f", w < 0 ? "dense" : sizes_text(candidates[shown]).c_str(), r);
    }
    std::printf("\n");
  }

  std::printf("\nmean over %zu heads (recall of the exact attention mass; density = share of causal tiles)\n",
              layers.size() * nh);
  std::printf("  per-head winners      recall %.4f (min %.4f)  density %.3f\n", win_recall / total_heads,
              win_min, win_density / total_heads);
  if (dense_heads > 0)
    std::printf("  with %d dense heads   recall %.4f              density %.3f\n", dense_heads,
                eff_recall / total_heads, eff_density / total_heads);
  for (std::size_t c = 0; c < nc; ++c) {
    double r = 0, d = 0, mn = 1;
    for (const auto& layer : layers)
      for (std::size_t h = 0; h < nh; ++h) {
        r += layer.recall[c][h];
        d += layer.density[c][h];
        mn = std::min(mn, layer.recall[c][h]);
      }
    std::printf("  fixed %-14s recall %.4f (min %.4f)  density %.3f\n", sizes_text(candidates[c]).c_str(),
                r / total_heads, mn, d / total_heads);
  }
  std::printf("winners:");
  for (std::size_t c = 0; c <= nc; ++c)
    if (wins[c] > 0) std::printf(" %s x%d", c == nc ? "dense" : sizes_text(candidates[c]).c_str(), wins[c]);
  std::printf("; default %s\n", sizes_text(config.default_sizes).c_str());
  std::printf("wrote %s in %.1f s\n", out.c_str(), seconds_since(t_start));
  return 0;
}

}  // namespace chunkwise::cli
