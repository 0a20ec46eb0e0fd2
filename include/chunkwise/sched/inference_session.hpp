// InferenceSession: the engine a caller embeds. Requests go in with submit(); every step()
// asks the batching policy for a plan, runs one forward pass of the ragged batch it names
// (prefill chunks and decodes together) and samples the next token of every sequence whose
// computed tokens reached its end. Finished requests are collected with take_finished().
// KV memory (blocks, prefix cache, eviction, host tier, swap) is the KvCache it owns.
#pragma once

#include <algorithm>
#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "chunkwise/backend/any_backend.hpp"
#include "chunkwise/backend/selective_recompute.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/kv/kv_cache.hpp"
#include "chunkwise/model/model.hpp"
#include "chunkwise/policy/batching/stall_free_batching.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/eviction/lru_eviction.hpp"
#include "chunkwise/policy/reuse/prefix_only_reuse.hpp"
#include "chunkwise/policy/reuse/reuse_plan.hpp"
#include "chunkwise/policy/reuse/reuse_recompute.hpp"
#include "chunkwise/policy/sparse/dense_attention.hpp"
#include "chunkwise/policy/sparse/sparse_selector.hpp"
#include "chunkwise/sched/detail/place_chunks.hpp"
#include "chunkwise/sched/request.hpp"
#include "chunkwise/sched/session_config.hpp"
#include "chunkwise/sched/session_metrics.hpp"
#include "chunkwise/sched/step_plan.hpp"

namespace chunkwise {

namespace detail {

struct Sequence {
  RequestId id = 0;
  Request request;
  std::vector<TokenId> tokens;  // prompt, then generated
  int prompt_len = 0;
  int computed = 0;
  int high_water = 0;     // most tokens ever computed: positions below it computed again are recomputes
  bool admitted = false;  // admitted at least once (its prefix-cache hit is counted then)
  bool running = false;   // holds KV on the device and is in the running list
  std::vector<TokenId> stops;
  RequestTimings timings;
  int prompt_tokens_computed = 0;
  int prompt_tokens_cached = 0;
  int prompt_tokens_reused = 0;
  int preemptions = 0;
  PromptLayout layout;         // the prompt's segments, kept while its reuse prefill is pending
  bool reuse_pending = false;  // its first admission runs the reuse policy

  [[nodiscard]] int generated() const { return static_cast<int>(tokens.size()) - prompt_len; }
  [[nodiscard]] SequenceView view() const {
    return SequenceView{id,
                        prompt_len,
                        static_cast<int>(tokens.size()),
                        computed,
                        generated(),
                        request.max_new_tokens,
                        request.priority,
                        timings.submitted_s,
                        tokens};
  }
};

struct PreparedPrompt {
  std::vector<TokenId> tokens;
  PromptLayout layout;  // the segments of a request given in segments; empty otherwise
};

// Turns a request into prompt tokens and validates it against the model and the KV pool.
PreparedPrompt prepare_prompt(const Model& model, const Request& request, int kv_capacity_tokens);

}  // namespace detail

template <BatchingPolicy Batching = StallFreeBatching, EvictionPolicy Eviction = LruEviction,
          SparsePolicy Sparse = DenseAttention, ReusePolicy Reuse = PrefixOnlyReuse,
          Backend BackendT = CpuBackend>
class InferenceSession {
 public:
  explicit InferenceSession(std::shared_ptr<const Model> model, SessionConfig config = {},
                            Batching batching = Batching(), Eviction eviction = Eviction(),
                            Sparse sparse = Sparse(), Reuse reuse = Reuse())
      : model_(std::move(model)),
        config_(std::move(config)),
        batching_(std::move(batching)),
        sparse_(std::move(sparse)),
        reuse_(std::move(reuse)),
        backend_(BackendMaker<BackendT>::make(config_.backend.get(), model_, num_blocks_for(*model_, config_),
                                              config_.block_size)),
        kv_(kv_config(config_, backend_.num_blocks()), std::move(eviction), kv_transfer()) {
    if (!config_.clock) {
      const auto start = std::chrono::steady_clock::now();
      config_.clock = [start] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      };
    }
    metrics_.kv_blocks_total = backend_.num_blocks();
    load_meter_ = LoadCostMeter(config_.reuse_load_costs);
    if constexpr (ChunkTierBackend<BackendT>)
      if (has_chunk_tier())
        backend_.set_chunk_tier_capacity(config_.chunk_device_mb << 20, config_.chunk_pinned_mb << 20);
  }

  // Validates and queues a request. Throws Error (kInvalidArgument, kTokenOutOfRange,
  // kContextOverflow, kKvExhausted, kTokenizer) without changing the session.
  RequestId submit(Request request) {
    detail::PreparedPrompt prompt =
        detail::prepare_prompt(*model_, request, backend_.num_blocks() * config_.block_size);
    detail::Sequence s;
    s.id = next_id_++;
    s.prompt_len = static_cast<int>(prompt.tokens.size());
    s.tokens = std::move(prompt.tokens);
    const auto& kinds = prompt.layout.kinds;
    s.reuse_pending =
        reuses_chunks() && std::find(kinds.begin(), kinds.end(), SegmentKind::kChunk) != kinds.end();
    if (s.reuse_pending) s.layout = std::move(prompt.layout);
    s.stops = request.stop_tokens;
    if (request.stop_at_eos && model_->config().eos >= 0) s.stops.push_back(model_->config().eos);
    s.request = std::move(request);
    s.timings.submitted_s = now();
    metrics_.requests_submitted++;
    metrics_.prompt_tokens += s.prompt_len;
    const RequestId id = s.id;
    kv_.open(id, s.tokens, s.request.cache_salt, s.request.priority, s.timings.submitted_s);
    waiting_.push_back(id);
    seqs_.emplace(id, std::move(s));
    return id;
  }

  // A new request that continues `parent` (running, not swapped out) from where it is, sharing
  // its KV blocks; the first write into a shared block copies it. For parallel sampling: give
  // the fork its own sampling parameters (seed). Returns the fork's id.
  RequestId fork(RequestId parent, SamplingParams sampling, std::string label) {
    auto found = seqs_.find(parent);
    check(found != seqs_.end() && found->second.running, ErrorCode::kInvalidArgument,
          "fork: request " + std::to_string(parent) + " is not running");
    validate(sampling);
    const detail::Sequence& p = seqs_.at(parent);
    detail::Sequence s;
    s.id = next_id_++;
    s.request = p.request;
    s.request.sampling = sampling;
    s.request.label = std::move(label);
    s.tokens = p.tokens;
    s.prompt_len = p.prompt_len;
    s.computed = p.computed;
    s.high_water = p.computed;
    s.admitted = true;
    s.running = true;
    s.stops = p.stops;
    s.timings.submitted_s = now();
    s.timings.first_token_s = s.timings.submitted_s;  // its generated tokens so far came with it
    kv_.fork(parent, s.id, s.timings.submitted_s);
    metrics_.requests_submitted++;
    const RequestId id = s.id;
    running_.push_back(id);
    seqs_.emplace(id, std::move(s));
    return id;
  }

  // Drops a queued or running request; it comes back from take_finished() with reason
  // kCancelled and the tokens generated so far. False when the id is not live.
  bool cancel(RequestId id) {
    auto it = seqs_.find(id);
    if (it == seqs_.end()) return false;
    for (auto* list : {&waiting_, &running_})
      list->erase(std::remove(list->begin(), list->end(), id), list->end());
    swapped_.erase(std::remove(swapped_.begin(), swapped_.end(), id), swapped_.end());
    metrics_.requests_cancelled++;
    finish(it->second, FinishReason::kCancelled);
    return true;
  }

  // Drops every cached prefix block that no request holds.
  void clear_prefix_cache() { kv_.clear(now()); }

  // Runs one forward pass. Does nothing when there is no work.
  StepResult step() {
    StepResult result;
    if (!has_work()) return result;
    swap_in_ready();
    make_room_for_decodes();
    StepPlan plan = plan_step(/*admit=*/true);
    if (plan.empty())
      throw Error(ErrorCode::kInvalidArgument, "batching policy planned nothing while work is queued");
    // A prompt whose chunks may be reused runs alone and whole: the selective forward is one
    // sequence and needs every row at its check layer. Its step skips the token budget (it runs
    // about the reused share of the rows past the check layer) and delays the others by a step.
    RequestId reuse_id = 0;   // planned
    RequestId reuse_run = 0;  // admitted whole: its step is a reuse prefill
    int reuse_begin = 0;
    for (const ScheduledChunk& c : plan.chunks) {
      const detail::Sequence& s = seqs_.at(c.id);
      if (!s.running && s.reuse_pending) {
        reuse_id = c.id;
        plan.chunks = {ScheduledChunk(c)};
        break;
      }
    }

    // Admit the waiting sequences the plan names (taking their cached prefix) and give every
    // chunk its KV blocks. A chunk that no longer fits (the cache shrank since planning) is
    // cut to what fits, or waits for the next step.
    ForwardBatch batch;
    batch.query_start.push_back(0);
    batch.page_start.push_back(0);
    std::vector<detail::Sequence*> sampled, computed_now;
    bool any_admitted = false;
    const double t_plan = now();
    for (int attempt = 0;; ++attempt) {
      for (const ScheduledChunk& c : plan.chunks) {
        detail::Sequence& s = seqs_.at(c.id);
        const bool admitting = !s.running;
        int n = c.num_tokens;
        if (admitting) {
          s.computed = kv_.match(s.id, s.tokens, t_plan);
          n = c.id == reuse_id ? static_cast<int>(s.tokens.size()) - s.computed
                               : std::min(n, static_cast<int>(s.tokens.size()) - s.computed);
        }
        if (kv_.reserve(s.id, s.computed, s.computed + n, t_plan)) {
          const int max_end =
              (static_cast<int>(kv_.blocks(s.id).size()) + kv_.available()) * config_.block_size;
          n = std::min(n, max_end - s.computed);
          if (n <= 0 || kv_.reserve(s.id, s.computed, s.computed + n, t_plan)) {
            if (admitting) {
              kv_.release(s.id, t_plan);
              s.computed = 0;
            }
            continue;
          }
        }
        if (admitting) {
          result.prefix_hit_tokens += s.computed;
          if (!s.admitted) {
            s.prompt_tokens_cached = std::min(s.computed, s.prompt_len);
            metrics_.prompt_tokens_cached += s.prompt_tokens_cached;
          }
          running_.push_back(c.id);
          s.admitted = s.running = true;
          any_admitted = true;
        }
        if (c.id == reuse_id) {
          // Cut to what memory holds, it is prefilled normally, in chunks.
          if (s.computed + n == s.prompt_len) reuse_run = c.id;
          reuse_begin = s.computed;
          s.reuse_pending = false;
        }
        append_chunk(batch, s, n, result);
        computed_now.push_back(&s);
        if (s.computed == static_cast<int>(s.tokens.size())) {
          batch.logit_rows.push_back(batch.query_start.back() - 1);
          sampled.push_back(&s);
        }
      }
      if (!batch.tokens.empty() || running_.empty() || attempt > 0) break;
      // Nothing fitted: admitting the policy's choice takes its cached prefix out of the evictable
      // blocks the policy counted on. The running sequences go on without admissions this step,
      // so the step still makes progress (and the memory comes back as they finish).
      plan = plan_step(/*admit=*/false);
      if (plan.empty()) break;
    }
    if (any_admitted)
      waiting_.erase(std::remove_if(waiting_.begin(), waiting_.end(),
                                    [&](RequestId id) { return seqs_.at(id).running; }),
                     waiting_.end());
    metrics_.kv_blocks_peak = std::max(metrics_.kv_blocks_peak, kv_.pool().in_use());
    if (batch.tokens.empty()) {  // everything planned was cut: memory is pinned; try again next step
      result.kv = kv_.usage();
      return result;
    }

    int reused_rows = 0;  // rows of the reuse prompt whose KV came from a tier
    if (reuse_run != 0) reused_rows = load_reused_chunks(batch, seqs_.at(reuse_run), reuse_begin);
    if constexpr (!std::is_same_v<Sparse, DenseAttention>) {
      // Only steps with a chunk long enough to probe pay for the sparse path.
      for (std::size_t i = 0; i + 1 < batch.query_start.size() && batch.recompute == nullptr; ++i)
        if (batch.query_start[i + 1] - batch.query_start[i] > 1 && batch.kv_len[i] >= sparse_.min_kv_len())
          batch.sparse = &sparse_;
    }
    const double t0 = now();
    next_tokens_.resize(sampled.size());
    if constexpr (SamplingBackend<BackendT>) {  // only token ids leave the device
      sample_rows_.clear();
      for (const detail::Sequence* s : sampled)
        sample_rows_.push_back({s->request.sampling, static_cast<std::uint64_t>(s->generated())});
      backend_.forward_sample(batch, sample_rows_, next_tokens_);
    } else {
      const int vocab = model_->config().vocab;
      logits_.resize(sampled.size() * static_cast<std::size_t>(vocab));
      backend_.forward(batch, logits_);
      for (std::size_t i = 0; i < sampled.size(); ++i)
        next_tokens_[i] =
            sample(logits_.data() + i * static_cast<std::size_t>(vocab), vocab, sampled[i]->request.sampling,
                   static_cast<std::uint64_t>(sampled[i]->generated()));
    }
    const double t1 = now();
    if (batch.recompute != nullptr) account_reuse(seqs_.at(reuse_run), reused_rows);
    if (batch.recompute == nullptr && result.decode_rows == 0)
      load_meter_.observe_prefill(result.prefill_rows, t1 - t0);
    for (detail::Sequence* s : computed_now) kv_.commit(s->id, s->tokens, s->computed, t1);

    for (std::size_t i = 0; i < sampled.size(); ++i) {
      detail::Sequence& s = *sampled[i];
      const TokenId tok = next_tokens_[i];
      s.timings.token_s.push_back(t1);
      if (s.generated() == 0) s.timings.first_token_s = t1;
      metrics_.generated_tokens++;
      if (std::find(s.stops.begin(), s.stops.end(), tok) != s.stops.end()) {
        finish(s, FinishReason::kStop);
        result.finished++;
      } else {
        s.tokens.push_back(tok);
        if (s.generated() >= s.request.max_new_tokens) {
          finish(s, FinishReason::kLength);
          result.finished++;
        }
      }
    }

    if (result.finished > 0)
      running_.erase(
          std::remove_if(running_.begin(), running_.end(), [&](RequestId id) { return !seqs_.contains(id); }),
          running_.end());
    result.rows = static_cast<int>(batch.tokens.size());
    result.sequences = static_cast<int>(batch.kv_len.size());
    result.seconds = t1 - t0;
    result.kv = kv_.usage();
    metrics_.steps++;
    metrics_.decode_tokens += result.decode_rows;
    metrics_.prefill_tokens += result.prefill_rows;
    metrics_.forward_s += result.seconds;
    metrics_.sparse = sparse_.stats();
    const double share = result.rows > 0 ? static_cast<double>(result.prefill_rows) / result.rows : 0.0;
    metrics_.prefill_s += result.seconds * share;
    metrics_.decode_s += result.seconds * (1.0 - share);
    return result;
  }

  // Requests finished since the last call, in the order they finished.
  std::vector<FinishedRequest> take_finished() { return std::exchange(finished_, {}); }

  [[nodiscard]] bool has_work() const { return !running_.empty() || !waiting_.empty() || !swapped_.empty(); }
  [[nodiscard]] std::size_t num_running() const { return running_.size(); }
  [[nodiscard]] std::size_t num_waiting() const { return waiting_.size() + swapped_.size(); }
  [[nodiscard]] const SessionMetrics& metrics() const { return metrics_; }
  [[nodiscard]] const SessionConfig& config() const { return config_; }
  [[nodiscard]] const Model& model() const { return *model_; }
  [[nodiscard]] const BlockPool& block_pool() const { return kv_.pool(); }
  [[nodiscard]] const KvCache<Eviction>& kv_cache() const { return kv_; }
  [[nodiscard]] const KvMetrics& kv_metrics() const { return kv_.metrics(); }
  [[nodiscard]] KvUsage kv_usage() const { return kv_.usage(); }
  [[nodiscard]] double now() const { return config_.clock(); }

 private:
  static int num_blocks_for(const Model& model, const SessionConfig& config) {
    validate(config);
    if (config.kv_blocks > 0) return config.kv_blocks;
    const std::size_t per_block =
        BackendMaker<BackendT>::kv_bytes_per_block(config.backend.get(), model.config(), config.block_size);
    const std::size_t blocks = config.kv_memory_mb * 1024 * 1024 / per_block;
    check(blocks >= 1, ErrorCode::kKvExhausted,
          "kv_memory_mb=" + std::to_string(config.kv_memory_mb) + " holds no KV block of this model");
    return static_cast<int>(std::min<std::size_t>(blocks, 1u << 30));
  }

  static KvCacheConfig kv_config(const SessionConfig& c, int num_blocks) {
    KvCacheConfig k;
    k.num_blocks = num_blocks;
    k.block_size = c.block_size;
    k.prefix_caching = c.prefix_caching;
    k.host_cache_blocks = c.host_cache_blocks;
    k.swap_blocks = c.preemption == Preemption::kSwap ? (c.swap_blocks > 0 ? c.swap_blocks : num_blocks) : 0;
    return k;
  }
  KvTransfer kv_transfer() {
    KvTransfer t;
    t.bytes_per_block = BackendMaker<BackendT>::kv_bytes_per_block(config_.backend.get(), model_->config(),
                                                                   config_.block_size);
    t.copy = [this](BlockId src, BlockId dst) { backend_.copy_block(src, dst); };
    t.save = [this](BlockId src, std::span<std::byte> dst) { backend_.save_block(src, dst); };
    t.load = [this](BlockId dst, std::span<const std::byte> src) { backend_.load_block(dst, src); };
    return t;
  }

  [[nodiscard]] bool reuses_chunks() const {
    if constexpr (std::is_same_v<Reuse, PrefixOnlyReuse> || !ChunkKvBackend<BackendT>) {
      return false;
    } else if constexpr (requires { backend_.supports_chunk_kv(); }) {
      return config_.chunk_store != nullptr && backend_.supports_chunk_kv();
    } else {
      return config_.chunk_store != nullptr;
    }
  }

  // The reuse prefill of s, whose rows [begin, prompt_len) are the whole of batch: fills the store
  // with the chunks it lacks, asks the reuse policy for a plan, places the planned chunks' KV (the
  // device tier first) and sets batch.recompute. A chunk that cannot be loaded is computed normally.
  // Returns the rows loaded.
  int load_reused_chunks(ForwardBatch& batch, detail::Sequence& s, int begin) {
    if constexpr (ChunkKvBackend<BackendT>) {
      ChunkStore& store = *config_.chunk_store;
      ReuseStats& stats = metrics_.reuse;
      const double t0 = now();
      if (config_.fill_chunk_store) fill_chunk_store(s);
      const double t1 = now();
      stats.fill_s += t1 - t0;
      stats.requests++;
      ReusePlan plan = reuse_.plan(s.layout, store);
      plan.validate();
      check(plan.rows() == s.prompt_len, ErrorCode::kInvalidArgument,
            "reuse policy returned a plan of " + std::to_string(plan.rows()) + " rows for a prompt of " +
                std::to_string(s.prompt_len));
      if (config_.reuse_load_control) plan = control_loading(std::move(plan), s, store);
      const std::vector<ReusePlan::LoadSpan> loaded = detail::place_planned_chunks(
          backend_, store, s.tokens, plan, begin,
          std::span<const std::int64_t>(batch.slots).first(static_cast<std::size_t>(s.prompt_len - begin)),
          stats, &load_meter_, config_.clock);
      stats.load_s += now() - t1;
      if (loaded.empty()) return 0;
      // Loaded KV is not a prefill's: it must never serve another prompt as a cached prefix.
      kv_.limit_indexing(s.id, loaded.front().begin);
      recompute_ = to_selective_recompute(
          make_reuse_plan(s.layout, loaded, plan.check_layer, plan.min_tokens, plan.gradual), begin,
          s.prompt_len);
      recompute_.report = &recompute_report_;
      batch.recompute = &recompute_;
      int rows = 0;
      for (const ReusePlan::LoadSpan& span : loaded) rows += span.end - span.begin;
      return rows;
    } else {
      return 0;
    }
  }

  [[nodiscard]] bool has_chunk_tier() const {
    return ChunkTierBackend<BackendT> && (config_.chunk_device_mb > 0 || config_.chunk_pinned_mb > 0);
  }

  // CacheBlend's loading controller: the planned chunks that only the host or disk tier holds and
  // that are cheaper to compute than to load (worth_loading) are dropped from the plan. With a
  // backend chunk tier nothing is: a chunk loaded once is kept there, and its later uses are hits.
  ReusePlan control_loading(ReusePlan plan, const detail::Sequence& s, const ChunkStore& store) {
    if (has_chunk_tier()) return plan;
    const ModelConfig& c = model_->config();
    const std::size_t row_bytes = 2 * static_cast<std::size_t>(c.n_layers) * c.kv_dim() * sizeof(float);
    std::vector<ReusePlan::LoadSpan> load;
    for (const ReusePlan::LoadSpan& span : plan.load) {
      bool device = false;
      if constexpr (ChunkTierBackend<BackendT>) device = backend_.keeps_chunk_kv(span.key);
      const ChunkTier tier = store.tier(span.key);
      const std::int32_t rows = span.end - span.begin;
      if (device || tier == ChunkTier::kNone ||
          worth_loading(tier, row_bytes * static_cast<std::size_t>(rows), rows, span.ratio,
                        load_meter_.costs()))
        load.push_back(span);
      else
        metrics_.reuse.chunks_computed++;
    }
    if (load.size() == plan.load.size()) return plan;
    return make_reuse_plan(s.layout, std::move(load), plan.check_layer, plan.min_tokens, plan.gradual);
  }

  // Prefills every chunk segment of s that the store lacks on its own, after the chunk context
  // (SessionConfig::chunk_context), in blocks borrowed for the step (a chunk that finds none is
  // skipped), and stores its rows' KV.
  void fill_chunk_store(const detail::Sequence& s) {
    if constexpr (ChunkKvBackend<BackendT>) {
      ChunkStore& store = *config_.chunk_store;
      struct Pending {
        RequestId id;
        ChunkKey key;
        std::span<const TokenId> tokens;
        std::int32_t first_row;
      };
      std::vector<Pending> pending;
      ForwardBatch fb;
      fb.query_start.push_back(0);
      fb.page_start.push_back(0);
      const double t = now();
      const int bs = config_.block_size;
      std::vector<TokenId> context = config_.chunk_context;
      if (context.empty() && model_->has_tokenizer() && model_->tokenizer().bos() >= 0)
        context.push_back(model_->tokenizer().bos());
      const auto n_context = static_cast<int>(context.size());
      for (std::size_t i = 0; i < s.layout.num_segments(); ++i) {
        const PromptSegment seg = s.layout.segment(i);
        if (seg.kind != SegmentKind::kChunk) continue;
        const std::span<const TokenId> tokens = s.layout.tokens_of(seg);
        const ChunkKey key = store.key_for(tokens);
        const bool listed =
            std::any_of(pending.begin(), pending.end(), [&](const Pending& p) { return p.key == key; });
        if (listed || store.contains(key)) continue;
        const RequestId id = next_id_++;
        const int n = n_context + seg.size();
        kv_.open(id, {}, {}, 0, t);
        if (kv_.reserve(id, 0, n, t)) {
          kv_.close(id, t);
          continue;
        }
        pending.push_back({id, key, tokens, static_cast<std::int32_t>(fb.tokens.size()) + n_context});
        const std::span<const BlockId> blocks = kv_.blocks(id);
        for (int p = 0; p < n; ++p) {
          fb.tokens.push_back(p < n_context ? context[static_cast<std::size_t>(p)]
                                            : tokens[static_cast<std::size_t>(p - n_context)]);
          fb.positions.push_back(p);
          fb.slots.push_back(static_cast<std::int64_t>(blocks[static_cast<std::size_t>(p / bs)]) * bs +
                             p % bs);
        }
        fb.pages.insert(fb.pages.end(), blocks.begin(), blocks.end());
        fb.query_start.push_back(static_cast<std::int32_t>(fb.tokens.size()));
        fb.page_start.push_back(static_cast<std::int32_t>(fb.pages.size()));
        fb.kv_len.push_back(n);
      }
      if (pending.empty()) return;
      const double tf = now();
      backend_.forward(fb, {});
      load_meter_.observe_prefill(static_cast<std::int64_t>(fb.tokens.size()), now() - tf);
      for (const Pending& p : pending) {
        const auto slots = std::span<const std::int64_t>(fb.slots).subspan(
            static_cast<std::size_t>(p.first_row), p.tokens.size());
        ChunkKv kv = backend_.read_chunk_kv(p.tokens, n_context, slots);
        kv_.close(p.id, t);
        if (kv.bytes() > store.config().host_capacity_bytes) continue;  // the store cannot hold it
        if constexpr (ChunkTierBackend<BackendT>) backend_.keep_chunk_kv(p.key, kv);
        store.put(p.key, std::move(kv));
        metrics_.reuse.chunks_stored++;
      }
    }
  }

  // After a selective forward: the loaded rows it did not recompute were not computed.
  void account_reuse(detail::Sequence& s, int loaded_rows) {
    std::int64_t always = 0;
    for (const auto& a : recompute_.always) always += a.end - a.begin;
    const auto recomputed = static_cast<std::int64_t>(recompute_report_.rows.size()) - always;
    const int reused = loaded_rows - static_cast<int>(recomputed);
    metrics_.reuse.tokens_recomputed += recomputed;
    s.prompt_tokens_reused += reused;
    s.prompt_tokens_computed -= reused;
    metrics_.prompt_tokens_computed -= reused;
  }

  // Adds tokens [computed, computed + n) of s to the batch.
  void append_chunk(ForwardBatch& batch, detail::Sequence& s, int n, StepResult& result) {
    const std::span<const BlockId> blocks = kv_.blocks(s.id);
    const int bs = config_.block_size;
    const int end = s.computed + n;
    for (int p = s.computed; p < end; ++p) {
      batch.tokens.push_back(s.tokens[static_cast<std::size_t>(p)]);
      batch.positions.push_back(p);
      batch.slots.push_back(static_cast<std::int64_t>(blocks[static_cast<std::size_t>(p / bs)]) * bs +
                            p % bs);
    }
    const auto used = static_cast<std::size_t>((end + bs - 1) / bs);
    batch.pages.insert(batch.pages.end(), blocks.begin(), blocks.begin() + static_cast<std::ptrdiff_t>(used));
    batch.query_start.push_back(static_cast<std::int32_t>(batch.tokens.size()));
    batch.page_start.push_back(static_cast<std::int32_t>(batch.pages.size()));
    batch.kv_len.push_back(end);
    const bool decode = s.view().is_decode();
    const int prompt_part = std::max(0, std::min(end, s.prompt_len) - s.computed);
    s.prompt_tokens_computed += prompt_part;
    metrics_.prompt_tokens_computed += prompt_part;
    metrics_.recomputed_tokens += std::max(0, std::min(end, s.high_water) - s.computed);
    if (decode)
      result.decode_rows += 1;
    else
      result.prefill_rows += n;
    s.computed = end;
    s.high_water = std::max(s.high_water, end);
  }

  // Swapped-out sequences come back first, oldest first, while memory allows (one block of
  // headroom per running sequence stays free so decodes do not preempt them again at once).
  void swap_in_ready() {
    while (!swapped_.empty()) {
      const RequestId id = swapped_.front();
      const int need = kv_.swapped_blocks(id) + static_cast<int>(running_.size());
      if (need > kv_.available() && !running_.empty()) return;
      if (kv_.swap_in(id, now())) {
        if (!running_.empty()) return;
        // Nothing runs and it still does not fit (cache pinned): recompute it instead.
        kv_.discard_swap(id);
        detail::Sequence& s = seqs_.at(id);
        s.computed = 0;
        waiting_.insert(waiting_.begin(), id);
      } else {
        running_.push_back(id);
        seqs_.at(id).running = true;
      }
      swapped_.pop_front();
    }
  }

  // Every running sequence needs room for one more token (a copy too where it shares its last
  // block). When memory is short the lowest-priority, most recently admitted sequence is
  // preempted: swapped to host RAM where configured and possible, else its blocks are released
  // and it waits to be recomputed with all its tokens kept (vLLM's recompute preemption).
  void make_room_for_decodes() {
    for (;;) {
      int needed = 0;
      for (RequestId id : running_) {
        const detail::Sequence& s = seqs_.at(id);
        needed += kv_.blocks_to_write(id, s.computed, s.computed + 1);
      }
      if (needed <= kv_.available() || running_.size() <= 1) return;
      auto victim = running_.end() - 1;
      for (auto it = running_.end() - 1; it != running_.begin();) {
        --it;
        if (seqs_.at(*it).request.priority < seqs_.at(*victim).request.priority) victim = it;
      }
      const RequestId id = *victim;
      running_.erase(victim);
      detail::Sequence& s = seqs_.at(id);
      s.running = false;
      s.preemptions++;
      metrics_.preemptions++;
      if (config_.preemption == Preemption::kSwap && kv_.swap_out(id, now())) {
        metrics_.swap_preemptions++;
        swapped_.push_back(id);
      } else {
        kv_.release(id, now());
        s.computed = 0;
        waiting_.insert(waiting_.begin(), id);
      }
    }
  }

  // admit = false hides the waiting queue (only running sequences go on).
  StepPlan plan_step(bool admit) {
    views_running_.clear();
    views_waiting_.clear();
    for (RequestId id : running_) views_running_.push_back(seqs_.at(id).view());
    // While swapped sequences wait to come back, nothing new is admitted (their memory first).
    if (admit && swapped_.empty()) {
      for (RequestId id : waiting_) {
        detail::Sequence& s = seqs_.at(id);
        SequenceView v = s.view();
        const auto cached = kv_.peek_prefix(id, s.tokens);  // the prefix it would start from
        v.computed = cached.tokens;
        v.prefix_blocks_taken = cached.blocks_taken;
        views_waiting_.push_back(v);
      }
    }
    const SchedulerView view{views_running_, views_waiting_,
                             Budgets{config_.max_batch_tokens, config_.max_sequences, kv_.available(),
                                     config_.block_size, backend_.num_blocks()}};
    StepPlan plan = batching_.plan(view);
    check_plan(plan, view);
    return plan;
  }

  // A policy is user code: a plan that breaks the budgets is rejected before anything changes.
  void check_plan(const StepPlan& plan, const SchedulerView& view) const {
    auto bad = [](const std::string& what) {
      throw Error(ErrorCode::kInvalidArgument, "batching policy returned an invalid plan: " + what);
    };
    int tokens = 0, blocks = 0;
    std::unordered_set<RequestId> seen;
    std::unordered_map<RequestId, const SequenceView*> by_id;
    for (auto list : {view.running, view.waiting})
      for (const SequenceView& v : list) by_id.emplace(v.id, &v);
    auto find = [&](RequestId id) -> const SequenceView* {
      auto it = by_id.find(id);
      return it == by_id.end() ? nullptr : it->second;
    };
    for (const ScheduledChunk& c : plan.chunks) {
      const SequenceView* found = find(c.id);
      if (found == nullptr) bad("unknown request " + std::to_string(c.id));
      if (!seen.insert(c.id).second) bad("request " + std::to_string(c.id) + " scheduled twice");
      const SequenceView& v = *found;
      if (c.num_tokens < 1 || c.num_tokens > v.uncomputed())
        bad("chunk of " + std::to_string(c.num_tokens) + " tokens for a request with " +
            std::to_string(v.uncomputed()) + " uncomputed");
      tokens += c.num_tokens;
      blocks += view.blocks_needed(v, c.num_tokens);
    }
    if (tokens > config_.max_batch_tokens) bad("more tokens than max_batch_tokens");
    if (static_cast<int>(plan.chunks.size()) > config_.max_sequences)
      bad("more sequences than max_sequences");
    if (blocks > view.budgets.free_blocks) bad("more KV blocks than are free");
  }

  void finish(detail::Sequence& s, FinishReason reason) {
    FinishedRequest f;
    f.id = s.id;
    f.label = s.request.label;
    f.prompt_tokens.assign(s.tokens.begin(), s.tokens.begin() + s.prompt_len);
    f.output_tokens.assign(s.tokens.begin() + s.prompt_len, s.tokens.end());
    if (model_->has_tokenizer())
      f.output_text = model_->tokenizer().decode(f.output_tokens, /*skip_special=*/true);
    f.reason = reason;
    s.timings.finished_s = now();
    f.timings = std::move(s.timings);
    f.prompt_tokens_computed = s.prompt_tokens_computed;
    f.prompt_tokens_cached = s.prompt_tokens_cached;
    f.prompt_tokens_reused = s.prompt_tokens_reused;
    f.preemptions = s.preemptions;
    kv_.close(s.id, s.timings.finished_s);  // the caller takes it out of the running list
    if (reason != FinishReason::kCancelled) metrics_.requests_finished++;
    finished_.push_back(std::move(f));
    seqs_.erase(s.id);
  }

  std::shared_ptr<const Model> model_;
  SessionConfig config_;
  Batching batching_;
  PolicySelector<Sparse> sparse_;
  [[no_unique_address]] Reuse reuse_;
  BackendT backend_;
  KvCache<Eviction> kv_;  // after backend_: its transfers call into it
  std::unordered_map<RequestId, detail::Sequence> seqs_;
  std::vector<RequestId> running_;  // admission order
  std::vector<RequestId> waiting_;  // arrival order; preempted sequences go first
  std::deque<RequestId> swapped_;   // swapped out to host RAM, oldest first
  std::vector<FinishedRequest> finished_;
  std::vector<SequenceView> views_running_, views_waiting_;
  std::vector<float> logits_;
  std::vector<SampleRow> sample_rows_;
  std::vector<TokenId> next_tokens_;
  SelectiveRecompute recompute_;  // the reuse step's recompute rule and what it did
  SelectiveRecomputeReport recompute_report_;
  LoadCostMeter load_meter_;  // the loading controller's costs
  SessionMetrics metrics_;
  RequestId next_id_ = 1;
};

}  // namespace chunkwise
