// InferenceSession: the engine a caller embeds. Requests go in with submit(); every step()
// asks the batching policy for a plan, runs one forward pass of the ragged batch it names
// (prefill chunks and decodes together) and samples the next token of every sequence whose
// computed tokens reached its end. Finished requests are collected with take_finished().
#pragma once

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "chunkwise/backend/concepts.hpp"
#include "chunkwise/backend/cpu/cpu_backend.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/kv/block_pool.hpp"
#include "chunkwise/model/model.hpp"
#include "chunkwise/policy/batching/continuous_batching.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/eviction/lru_eviction.hpp"
#include "chunkwise/policy/reuse/prefix_only_reuse.hpp"
#include "chunkwise/policy/sparse/dense_attention.hpp"
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
  std::vector<BlockId> blocks;
  std::vector<TokenId> stops;
  RequestTimings timings;
  int prompt_tokens_computed = 0;
  int preemptions = 0;

  [[nodiscard]] int generated() const { return static_cast<int>(tokens.size()) - prompt_len; }
  [[nodiscard]] SequenceView view() const {
    return SequenceView{id,
                        prompt_len,
                        static_cast<int>(tokens.size()),
                        computed,
                        generated(),
                        request.max_new_tokens,
                        request.priority,
                        timings.submitted_s};
  }
};

// Turns a request into prompt tokens and validates it against the model and the KV pool.
std::vector<TokenId> prepare_prompt(const Model& model, const Request& request, int kv_capacity_tokens);

}  // namespace detail

template <BatchingPolicy Batching = ContinuousBatching, EvictionPolicy Eviction = LruEviction,
          SparsePolicy Sparse = DenseAttention, ReusePolicy Reuse = PrefixOnlyReuse,
          Backend BackendT = CpuBackend>
class InferenceSession {
 public:
  explicit InferenceSession(std::shared_ptr<const Model> model, SessionConfig config = {},
                            Batching batching = {}, Eviction eviction = {}, Sparse sparse = {},
                            Reuse reuse = {})
      : model_(std::move(model)),
        config_(std::move(config)),
        batching_(std::move(batching)),
        eviction_(std::move(eviction)),
        sparse_(std::move(sparse)),
        reuse_(std::move(reuse)),
        pool_(num_blocks_for(*model_, config_)),
        backend_(model_, pool_.total(), config_.block_size) {
    if (!config_.clock) {
      const auto start = std::chrono::steady_clock::now();
      config_.clock = [start] {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      };
    }
    metrics_.kv_blocks_total = pool_.total();
  }

  // Validates and queues a request. Throws Error (kInvalidArgument, kTokenOutOfRange,
  // kContextOverflow, kKvExhausted, kTokenizer) without changing the session.
  RequestId submit(Request request) {
    std::vector<TokenId> prompt =
        detail::prepare_prompt(*model_, request, pool_.total() * config_.block_size);
    detail::Sequence s;
    s.id = next_id_++;
    s.prompt_len = static_cast<int>(prompt.size());
    s.tokens = std::move(prompt);
    s.stops = request.stop_tokens;
    if (request.stop_at_eos && model_->config().eos >= 0) s.stops.push_back(model_->config().eos);
    s.request = std::move(request);
    s.timings.submitted_s = now();
    metrics_.requests_submitted++;
    metrics_.prompt_tokens += s.prompt_len;
    const RequestId id = s.id;
    waiting_.push_back(id);
    seqs_.emplace(id, std::move(s));
    return id;
  }

  // Runs one forward pass. Does nothing when there is no work.
  StepResult step() {
    StepResult result;
    if (!has_work()) return result;
    make_room_for_decodes();
    const StepPlan plan = plan_step();
    if (plan.empty())
      throw Error(ErrorCode::kInvalidArgument, "batching policy planned nothing while work is queued");

    // Admit the waiting sequences the plan names and give every chunk its KV blocks.
    ForwardBatch batch;
    batch.query_start.push_back(0);
    batch.page_start.push_back(0);
    std::vector<detail::Sequence*> sampled;
    for (const ScheduledChunk& c : plan.chunks) {
      detail::Sequence& s = seqs_.at(c.id);
      if (auto it = std::find(waiting_.begin(), waiting_.end(), c.id); it != waiting_.end()) {
        waiting_.erase(it);
        running_.push_back(c.id);
      }
      const int end = s.computed + c.num_tokens;
      while (static_cast<int>(s.blocks.size()) * config_.block_size < end)
        s.blocks.push_back(*pool_.allocate());
      for (int p = s.computed; p < end; ++p) {
        batch.tokens.push_back(s.tokens[static_cast<std::size_t>(p)]);
        batch.positions.push_back(p);
        batch.slots.push_back(
            static_cast<std::int64_t>(s.blocks[static_cast<std::size_t>(p / config_.block_size)]) *
                config_.block_size +
            p % config_.block_size);
      }
      batch.pages.insert(batch.pages.end(), s.blocks.begin(), s.blocks.end());
      batch.query_start.push_back(static_cast<std::int32_t>(batch.tokens.size()));
      batch.page_start.push_back(static_cast<std::int32_t>(batch.pages.size()));
      batch.kv_len.push_back(end);
      const bool decode = s.view().is_decode();
      const int prompt_part = std::max(0, std::min(end, s.prompt_len) - s.computed);
      s.prompt_tokens_computed += prompt_part;
      metrics_.prompt_tokens_computed += prompt_part;
      if (decode) {
        result.decode_rows += 1;
      } else {
        result.prefill_rows += c.num_tokens;
        metrics_.recomputed_tokens += c.num_tokens - prompt_part;
      }
      s.computed = end;
      if (end == static_cast<int>(s.tokens.size())) {
        batch.logit_rows.push_back(batch.query_start.back() - 1);
        sampled.push_back(&s);
      }
    }
    metrics_.kv_blocks_peak = std::max(metrics_.kv_blocks_peak, pool_.used());

    const int vocab = model_->config().vocab;
    logits_.resize(sampled.size() * static_cast<std::size_t>(vocab));
    const double t0 = now();
    backend_.forward(batch, logits_);
    const double t1 = now();

    for (std::size_t i = 0; i < sampled.size(); ++i) {
      detail::Sequence& s = *sampled[i];
      const TokenId tok = sample(logits_.data() + i * static_cast<std::size_t>(vocab), vocab,
                                 s.request.sampling, static_cast<std::uint64_t>(s.generated()));
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

    result.rows = static_cast<int>(batch.tokens.size());
    result.sequences = static_cast<int>(plan.chunks.size());
    result.seconds = t1 - t0;
    metrics_.steps++;
    metrics_.decode_tokens += result.decode_rows;
    metrics_.forward_s += result.seconds;
    const double share = result.rows > 0 ? static_cast<double>(result.prefill_rows) / result.rows : 0.0;
    metrics_.prefill_s += result.seconds * share;
    metrics_.decode_s += result.seconds * (1.0 - share);
    return result;
  }

  // Requests finished since the last call, in the order they finished.
  std::vector<FinishedRequest> take_finished() { return std::exchange(finished_, {}); }

  [[nodiscard]] bool has_work() const { return !running_.empty() || !waiting_.empty(); }
  [[nodiscard]] std::size_t num_running() const { return running_.size(); }
  [[nodiscard]] std::size_t num_waiting() const { return waiting_.size(); }
  [[nodiscard]] const SessionMetrics& metrics() const { return metrics_; }
  [[nodiscard]] const SessionConfig& config() const { return config_; }
  [[nodiscard]] const Model& model() const { return *model_; }
  [[nodiscard]] const BlockPool& block_pool() const { return pool_; }
  [[nodiscard]] double now() const { return config_.clock(); }

 private:
  static int num_blocks_for(const Model& model, const SessionConfig& config) {
    validate(config);
    if (config.kv_blocks > 0) return config.kv_blocks;
    const std::size_t per_block = BackendT::kv_bytes_per_block(model.config(), config.block_size);
    const std::size_t blocks = config.kv_memory_mb * 1024 * 1024 / per_block;
    check(blocks >= 1, ErrorCode::kKvExhausted,
          "kv_memory_mb=" + std::to_string(config.kv_memory_mb) + " holds no KV block of this model");
    return static_cast<int>(std::min<std::size_t>(blocks, 1u << 30));
  }

  // Every running decode needs room for one more token; when memory is short the most recently
  // admitted sequence gives its blocks back and waits to be recomputed (vLLM's recompute
  // preemption), keeping all its tokens.
  void make_room_for_decodes() {
    for (;;) {
      int needed = 0;
      for (RequestId id : running_) {
        const detail::Sequence& s = seqs_.at(id);
        const int bs = config_.block_size;
        needed += (s.computed + 1 + bs - 1) / bs - static_cast<int>(s.blocks.size());
      }
      if (needed <= pool_.free_count() || running_.size() <= 1) return;
      const RequestId victim = running_.back();
      running_.pop_back();
      detail::Sequence& s = seqs_.at(victim);
      for (BlockId b : s.blocks) pool_.release(b);
      s.blocks.clear();
      s.computed = 0;
      s.preemptions++;
      metrics_.preemptions++;
      waiting_.insert(waiting_.begin(), victim);
    }
  }

  StepPlan plan_step() {
    views_running_.clear();
    views_waiting_.clear();
    for (RequestId id : running_) views_running_.push_back(seqs_.at(id).view());
    for (RequestId id : waiting_) views_waiting_.push_back(seqs_.at(id).view());
    const SchedulerView view{
        views_running_, views_waiting_,
        Budgets{config_.max_batch_tokens, config_.max_sequences, pool_.free_count(), config_.block_size}};
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
    for (const ScheduledChunk& c : plan.chunks) {
      auto it = seqs_.find(c.id);
      if (it == seqs_.end()) bad("unknown request " + std::to_string(c.id));
      if (!seen.insert(c.id).second) bad("request " + std::to_string(c.id) + " scheduled twice");
      const SequenceView v = it->second.view();
      if (c.num_tokens < 1 || c.num_tokens > v.uncomputed())
        bad("chunk of " + std::to_string(c.num_tokens) + " tokens for a request with " +
            std::to_string(v.uncomputed()) + " uncomputed");
      tokens += c.num_tokens;
      blocks += view.blocks_needed(v, c.num_tokens);
    }
    if (tokens > config_.max_batch_tokens) bad("more tokens than max_batch_tokens");
    if (static_cast<int>(plan.chunks.size()) > config_.max_sequences)
      bad("more sequences than max_sequences");
    if (blocks > pool_.free_count()) bad("more KV blocks than are free");
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
    f.preemptions = s.preemptions;
    for (BlockId b : s.blocks) pool_.release(b);
    running_.erase(std::find(running_.begin(), running_.end(), s.id));
    metrics_.requests_finished++;
    finished_.push_back(std::move(f));
    seqs_.erase(s.id);
  }

  std::shared_ptr<const Model> model_;
  SessionConfig config_;
  Batching batching_;
  [[no_unique_address]] Eviction eviction_;
  [[no_unique_address]] Sparse sparse_;
  [[no_unique_address]] Reuse reuse_;
  BlockPool pool_;
  BackendT backend_;
  std::unordered_map<RequestId, detail::Sequence> seqs_;
  std::vector<RequestId> running_;  // admission order
  std::vector<RequestId> waiting_;  // arrival order; preempted sequences go first
  std::vector<FinishedRequest> finished_;
  std::vector<SequenceView> views_running_, views_waiting_;
  std::vector<float> logits_;
  SessionMetrics metrics_;
  RequestId next_id_ = 1;
};

}  // namespace chunkwise
