// KvCache against a fake device and a plain reference model; no model weights needed. The fake
// device keeps (token, position, salt) in every slot of every block and implements KvTransfer
// faithfully, and the test writes KV the way a backend would. So a sequence that reads a stale,
// foreign or half-copied block shows up as wrong slot content, whatever path put it there
// (prefix match, host tier, swap, fork, copy-on-write).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/kv/block_hash.hpp"
#include "chunkwise/kv/kv_cache.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/eviction/cost_aware_eviction.hpp"
#include "chunkwise/policy/eviction/lru_eviction.hpp"
#include "chunkwise/policy/eviction/prefix_lifetime_eviction.hpp"
#include "chunkwise/policy/eviction/priority_eviction.hpp"

using namespace chunkwise;

namespace {

using SeqId = std::uint64_t;

// Fixed so that CI failures reproduce. CHUNKWISE_KV_FUZZ_OPS sets the op count and
// CHUNKWISE_KV_FUZZ_SEED another seed (nightly exploration; failures print the seed).
constexpr std::uint64_t kFuzzSeed = 0x6b76'2026'1128ULL;
constexpr int kDefaultFuzzOps = 100'000;
constexpr int kLongFuzzOps = 2'000'000;
constexpr int kPosBits = 12;  // a slot tag packs the position (< 4096) and the salt id above it

std::size_t uz(int i) {
  return static_cast<std::size_t>(i);
}
template <class C>
int isize(const C& c) {
  return static_cast<int>(c.size());
}

// ---- fake device ------------------------------------------------------------------------------

struct Slot {
  std::int32_t token = -1;
  std::int32_t tag = -1;  // position | salt id << kPosBits; -1 = poisoned (never written)
  friend bool operator==(const Slot&, const Slot&) = default;
};
static_assert(sizeof(Slot) == 8, "bytes_per_block is block_size * 8");

Slot make_slot(TokenId token, int pos, int salt) {
  return {token, pos | (salt << kPosBits)};
}
int slot_salt(Slot s) {
  return s.tag >> kPosBits;
}
std::string describe(Slot s) {
  if (s.tag < 0) return "poison";
  return "(token " + std::to_string(s.token) + ", pos " + std::to_string(s.tag & ((1 << kPosBits) - 1)) +
         ", salt " + std::to_string(slot_salt(s)) + ")";
}

// Device memory as blocks of slots. Transfer errors are recorded, not thrown, because they fire
// inside KvCache calls; the test checks error() after every operation.
class FakeDevice {
 public:
  FakeDevice(int num_blocks, int block_size)
      : num_blocks_(num_blocks), bs_(block_size), slots_(uz(num_blocks) * uz(block_size)) {}
  FakeDevice(const FakeDevice&) = delete;  // the transfer callbacks point at this object
  FakeDevice& operator=(const FakeDevice&) = delete;

  [[nodiscard]] std::size_t bytes_per_block() const { return uz(bs_) * sizeof(Slot); }

  KvTransfer transfer() {
    KvTransfer t;
    t.bytes_per_block = bytes_per_block();
    t.copy = [this](BlockId src, BlockId dst) {
      if (!valid(src, "copy") || !valid(dst, "copy")) return;
      if (src == dst) return fail("copy of block " + std::to_string(src) + " onto itself");
      std::copy_n(block(src).begin(), bs_, block(dst).begin());
      ++copies;
    };
    t.save = [this](BlockId src, std::span<std::byte> dst) {
      if (!valid(src, "save")) return;
      if (dst.size() != bytes_per_block()) return fail("save into " + std::to_string(dst.size()) + " bytes");
      std::memcpy(dst.data(), block(src).data(), dst.size());
      ++saves;
    };
    t.load = [this](BlockId dst, std::span<const std::byte> src) {
      if (!valid(dst, "load")) return;
      if (src.size() != bytes_per_block()) return fail("load from " + std::to_string(src.size()) + " bytes");
      std::memcpy(block(dst).data(), src.data(), src.size());
      ++loads;
    };
    return t;
  }

  std::span<Slot> block(BlockId b) { return {slots_.data() + uz(b) * uz(bs_), uz(bs_)}; }
  [[nodiscard]] Slot at(BlockId b, int i) const { return slots_[uz(b) * uz(bs_) + uz(i)]; }
  void write(BlockId b, int i, Slot s) { slots_[uz(b) * uz(bs_) + uz(i)] = s; }
  void poison(BlockId b) { std::fill_n(block(b).begin(), bs_, Slot{}); }
  [[nodiscard]] const std::string& error() const { return error_; }

  int copies = 0;
  int saves = 0;
  int loads = 0;

 private:
  bool valid(BlockId b, const char* op) {
    if (b >= 0 && b < num_blocks_) return true;
    fail(std::string(op) + " of block id " + std::to_string(b) + ", out of range");
    return false;
  }
  void fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
  }

  int num_blocks_;
  int bs_;
  std::vector<Slot> slots_;
  std::string error_;
};

// Short horizons so that frequency decay and retention expiry happen within a run.
template <class P>
P make_policy() {
  return P{};
}
template <>
CostAwareEviction make_policy<CostAwareEviction>() {
  return CostAwareEviction(5.0, 64.0);
}
template <>
PriorityEviction make_policy<PriorityEviction>() {
  return PriorityEviction(5.0);
}

std::vector<TokenId> iota_tokens(TokenId first, int n) {
  std::vector<TokenId> t(uz(n));
  for (int i = 0; i < n; ++i) t[uz(i)] = first + i;
  return t;
}
std::vector<TokenId> concat(std::vector<TokenId> a, const std::vector<TokenId>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
std::vector<TokenId> head(const std::vector<TokenId>& a, int n) {
  return {a.begin(), a.begin() + n};
}

// ---- focused-test rig ----------------------------------------------------------------------

// A cache on a fake device plus the scheduler/backend steps the focused tests need.
template <class P = LruEviction>
struct Rig {
  explicit Rig(const KvCacheConfig& c, P policy = make_policy<P>())
      : device(c.num_blocks, c.block_size), cache(c, std::move(policy), device.transfer()) {}

  // Reserve, write (token, position, salt) into the table as a backend would, commit.
  bool compute(SeqId id, const std::vector<TokenId>& tokens, int from, int end, int salt = 0) {
    if (cache.reserve(id, from, end, now)) return false;
    const auto table = cache.blocks(id);
    const int bs = cache.block_size();
    for (int p = from; p < end; ++p)
      device.write(table[uz(p / bs)], p % bs, make_slot(tokens[uz(p)], p, salt));
    cache.commit(id, tokens, end, now);
    return true;
  }
  // Admission: open, match, compute the rest of the prompt; returns the matched tokens.
  int admit(SeqId id, const std::vector<TokenId>& prompt, std::string_view salt = "", int salt_id = 0) {
    cache.open(id, prompt, salt, 0, now);
    const int m = cache.match(id, prompt, now);
    REQUIRE(compute(id, prompt, m, isize(prompt), salt_id));
    return m;
  }
  // Every position in [0, computed) of the sequence's table holds its own (token, position, salt).
  [[nodiscard]] bool holds_content(SeqId id, const std::vector<TokenId>& tokens, int computed,
                                   int salt = 0) const {
    const auto table = cache.blocks(id);
    const int bs = cache.block_size();
    if (isize(table) * bs < computed) return false;
    for (int p = 0; p < computed; ++p)
      if (device.at(table[uz(p / bs)], p % bs) != make_slot(tokens[uz(p)], p, salt)) return false;
    return true;
  }
  void poison_free_blocks() {
    for (BlockId b = 0; b < cache.pool().total(); ++b)
      if (cache.pool().refcount(b) == 0 && !cache.pool().indexed(b)) device.poison(b);
  }
  void require_invariants() const {
    const std::string e = cache.check_invariants();
    INFO(e);
    REQUIRE(e.empty());
    const KvUsage u = cache.usage();
    REQUIRE(u.free + u.cached + u.in_use == u.total);
    REQUIRE(device.error().empty());
  }

  FakeDevice device;  // before the cache: the cache's transfer callbacks point at it
  KvCache<P> cache;
  double now = 0;
};

bool same_usage(const KvUsage& a, const KvUsage& b) {
  return a.total == b.total && a.free == b.free && a.cached == b.cached && a.in_use == b.in_use &&
         a.evictable == b.evictable && a.host_cached == b.host_cached && a.swap_free == b.swap_free;
}

// ---- randomized model check -------------------------------------------------------------------

struct FuzzConfig {
  std::string name;
  int block_size = 16;
  int num_blocks = 128;
  int host_cache_blocks = 0;
  int swap_blocks = 0;
  int max_len = 160;  // tokens of a sequence, prompt and generation together
  int max_live = 12;  // open sequences at once
  int ops = kDefaultFuzzOps;
};

// `ops` is the total of one run over every configuration: 20% to each block-16 configuration,
// 10% to each small-block one.
std::vector<FuzzConfig> fuzz_configs(int ops) {
  std::vector<FuzzConfig> configs;
  const int main_ops = std::max(1, ops / 5);
  for (const int host : {0, 32})
    for (const int swap : {0, 64})
      configs.push_back({"bs16 host" + std::to_string(host) + " swap" + std::to_string(swap), 16, 64, host,
                         swap, 256, 12, main_ops});
  // Small blocks: many blocks per sequence, hits on nearly every prompt.
  const int brief = std::max(1, ops / 10);
  configs.push_back({"bs4 host16 swap32", 4, 64, 16, 32, 64, 8, brief});
  configs.push_back({"bs1 host16 swap16", 1, 64, 16, 16, 20, 6, brief});
  return configs;
}

int fuzz_ops(int fallback) {
  const char* env = std::getenv("CHUNKWISE_KV_FUZZ_OPS");
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const long v = std::strtol(env, &end, 10);
  return (*end == '\0' && v > 0 && v <= 1'000'000'000L) ? static_cast<int>(v) : fallback;
}

std::uint64_t fuzz_seed() {
  const char* env = std::getenv("CHUNKWISE_KV_FUZZ_SEED");
  if (env == nullptr || *env == '\0') return kFuzzSeed;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(env, &end, 0);
  return *end == '\0' ? static_cast<std::uint64_t>(v) : kFuzzSeed;
}

#define KV_EXPECT(cond, message) \
  do {                           \
    if (!(cond)) fail(message);  \
  } while (0)

// The reference model and the driver. Per sequence: its tokens, how many are computed, its
// salt, and whether it is swapped out or waits for a new prefix match (after recompute
// preemption). Tables come from the cache; the model checks them by content.
template <class P>
class KvFuzzer {
 public:
  KvFuzzer(const FuzzConfig& cfg, std::uint64_t seed)
      : cfg_(cfg),
        bs_(cfg.block_size),
        seed_(seed),
        device_(cfg.num_blocks, cfg.block_size),
        cache_(KvCacheConfig{cfg.num_blocks, cfg.block_size, true, cfg.host_cache_blocks, cfg.swap_blocks},
               make_policy<P>(), device_.transfer()),
        rng_(seed),
        poisoned_(uz(cfg.num_blocks), 0) {
    for (std::string_view s : {"", "u1"}) add_salt(std::string(s));
    // Shared prefixes (system prompts, few-shot headers): most prompts start with one.
    for (int i = 0; i < 6; ++i) {
      std::vector<TokenId> p(uz(rand_int(1, cfg.max_len / 2)));
      for (TokenId& t : p) t = rand_int(100, 1099);
      prefixes_.push_back(std::move(p));
    }
  }

  void run() {
    for (op_ = 0; op_ < cfg_.ops; ++op_) {
      now_ += 0.01 * rand_int(1, 10);
      try {
        step();
      } catch (const std::exception& e) {
        fail(std::string("exception: ") + e.what());
      }
      verify();
    }
    op_name_ = "final clear";
    close_all();
    cache_.clear(now_);
    verify();
    expect_empty();
  }

  // A run that never hit, copied, evicted or swapped would pass vacuously.
  void check_coverage() const {
    if (cfg_.ops < 10'000) return;
    const KvMetrics& m = cache_.metrics();
    INFO(cfg_.name << ": hits " << m.prefix_hit_tokens << ", host hits " << m.host_hit_tokens << ", cow "
                   << m.cow_copies << ", evictions " << m.evictions << ", swapped in " << m.swapped_in_blocks
                   << ", out-of-memory " << ooms_ << ", fresh salts " << isize(salts_) - 2);
    CHECK(m.prefix_hit_tokens > 0);
    if (bs_ > 1) CHECK(m.cow_copies > 0);  // with one-token blocks nothing partial is ever shared
    CHECK(m.evictions > 0);
    CHECK(ooms_ > 0);
    if (cfg_.host_cache_blocks > 0) CHECK(m.host_hit_tokens > 0);
    if (cfg_.swap_blocks > 0) CHECK(m.swapped_in_blocks > 0);
  }

 private:
  struct ModelSeq {
    std::vector<TokenId> tokens;
    int salt = 0;
    int computed = 0;
    bool needs_match = true;  // admitted or preempted (recompute): the next step matches first
    bool swapped = false;
    int swap_count = 0;
    std::int64_t chain_epoch = -1;  // evictions when its blocks were last (re)offered from block 0
  };
  // Full blocks a sequence committed while nothing was evicted since its chain started: while
  // KvMetrics::evictions stays at `epoch`, every one of them is in the index.
  struct Witness {
    int salt = 0;
    std::vector<TokenId> tokens;
    std::int64_t epoch = 0;
  };

  // ---- randomness --------------------------------------------------------------------------
  int rand_int(int lo, int hi) {  // inclusive; plain modulo keeps runs identical across libraries
    return lo + static_cast<int>(rng_() % static_cast<std::uint64_t>(hi - lo + 1));
  }
  bool chance(int percent) { return rand_int(0, 99) < percent; }
  template <class Pred>
  std::optional<SeqId> pick(Pred pred) {
    std::vector<SeqId> ids;
    for (const auto& [id, s] : seqs_)
      if (pred(s)) ids.push_back(id);
    if (ids.empty()) return std::nullopt;
    return ids[uz(rand_int(0, isize(ids) - 1))];
  }
  static bool running(const ModelSeq& s) { return !s.swapped && !s.needs_match; }

  // ---- operations --------------------------------------------------------------------------
  // Sequences live long enough to grow past what memory holds for all of them, so reservations
  // evict, fail and preempt regularly.
  void step() {
    op_seq_ = 0;
    if (cfg_.ops >= 5000 && op_ % 4999 == 4998) return clear_at_idle();
    const int r = rand_int(0, 99);
    std::optional<SeqId> id;
    if (r < 10 && isize(seqs_) < cfg_.max_live) return admit();
    if (r < 60) id = pick([](const ModelSeq& s) { return !s.swapped; });
    if (id) return extend(*id);
    if (r >= 60 && r < 65) id = pick([](const ModelSeq& s) { return running(s) && s.computed > 0; });
    if (id) return fork(*id);
    if (r >= 65 && r < 70) id = pick([](const ModelSeq&) { return true; });
    if (id) return finish(*id);
    if (r >= 70 && r < 76) return evict();
    if (r >= 76 && r < 81) id = pick(running);
    if (id) return preempt_recompute(*id);
    if (r >= 81 && r < 87) id = pick(running);
    if (id) return swap_out(*id);
    if (r >= 87) id = pick([](const ModelSeq& s) { return s.swapped; });
    if (id) return swap_in(*id);
    admit();
  }

  std::vector<TokenId> make_prompt(int salt) {
    if (salt < 2 && !recent_.empty() && chance(25)) {  // an identical prompt again: must hit
      const auto& [rs, rt] = recent_[uz(rand_int(0, isize(recent_) - 1))];
      if (rs == salt) return rt;
    }
    std::vector<TokenId> t;
    if (chance(80)) t = prefixes_[uz(rand_int(0, isize(prefixes_) - 1))];
    const int suffix = rand_int(t.empty() ? 1 : 0, cfg_.max_len / 4);
    for (int i = 0; i < suffix; ++i) t.push_back(rand_int(0, 3));  // tiny vocabulary: partial overlaps
    return t;
  }

  void admit() {
    op_name_ = "admit";
    if (isize(seqs_) >= cfg_.max_live) {
      if (auto id = pick([](const ModelSeq&) { return true; })) finish(*id);
      return;
    }
    ModelSeq s;
    s.salt = chance(45) ? 0 : chance(90) ? 1 : add_salt("fresh" + std::to_string(salts_.size()));
    s.tokens = make_prompt(s.salt);
    if (s.salt < 2) {
      recent_.emplace_back(s.salt, s.tokens);
      if (recent_.size() > 32) recent_.pop_front();
    }
    const SeqId id = next_id_++;
    const int salt = s.salt;
    op_seq_ = id;
    cache_.open(id, s.tokens, salts_[uz(s.salt)], rand_int(0, 2), now_);
    seqs_.emplace(id, std::move(s));
    KV_EXPECT(cache_.holds(id) && cache_.num_sequences() == seqs_.size(),
              "open did not register the sequence");
    // A fresh salt shares nothing, on the device or on the host tier.
    const int matched = match(id);
    KV_EXPECT(salt < 2 || matched == 0, "a fresh salt hit " + std::to_string(matched) + " tokens");
    prefill_chunk(id);
  }

  // Admission lookup: within bounds, never more than peek said, and at least every block a
  // witness proves is cached. Content (salt included) is checked by verify().
  int match(SeqId id) {
    ModelSeq& s = seqs_.at(id);
    const int limit = (isize(s.tokens) - 1) / bs_;
    const std::int64_t evictions = cache_.metrics().evictions;
    int must = 0;
    for (const Witness& w : witnesses_) {
      if (w.salt != s.salt || w.epoch != evictions) continue;
      const auto n = std::min(s.tokens.size(), w.tokens.size());
      const auto lcp =
          std::mismatch(s.tokens.begin(), s.tokens.begin() + static_cast<std::ptrdiff_t>(n), w.tokens.begin())
              .first -
          s.tokens.begin();
      must = std::max(must, std::min(limit, static_cast<int>(lcp) / bs_));
    }
    const auto peek = cache_.peek_prefix(id, s.tokens);
    const int peeked = peek.tokens;
    const int available = cache_.available();
    const std::int64_t host_hits = cache_.metrics().host_hit_tokens;
    const int m = cache_.match(id, s.tokens, now_);
    const std::string got = "match gave " + std::to_string(m) + " tokens";
    KV_EXPECT(m >= 0 && m % bs_ == 0 && m <= limit * bs_, got + ", limit " + std::to_string(limit * bs_));
    KV_EXPECT(m <= peeked, got + " but peek said " + std::to_string(peeked));
    // What batching policies budget with: the blocks a match takes out of available().
    if (m == peeked)
      KV_EXPECT(available - cache_.available() == peek.blocks_taken,
                got + ": available fell by " + std::to_string(available - cache_.available()) + ", peek said " +
                    std::to_string(peek.blocks_taken));
    if (cfg_.host_cache_blocks == 0) KV_EXPECT(m == peeked, got + " but peek said " + std::to_string(peeked));
    KV_EXPECT(m >= must * bs_,
              got + " but a committed sequence proves " + std::to_string(must * bs_) + " cached");
    KV_EXPECT(isize(cache_.blocks(id)) == m / bs_, got + " but the table has another size");
    KV_EXPECT(cfg_.host_cache_blocks > 0 || cache_.metrics().host_hit_tokens == host_hits,
              "host hit without a host tier");
    s.computed = m;
    s.needs_match = false;
    s.chain_epoch = cache_.metrics().evictions;
    return m;
  }

  void prefill_chunk(SeqId id) {
    const ModelSeq& s = seqs_.at(id);
    const int left = isize(s.tokens) - s.computed;
    if (left > 0) compute(id, chance(50) ? isize(s.tokens) : s.computed + rand_int(1, left));
  }

  // One forward pass of tokens [computed, end): reserve, check the writable blocks are private,
  // write the KV, commit. On OutOfKvMemory nothing may change, and the shortage must be real.
  bool compute(SeqId id, int end) {
    ModelSeq& s = seqs_.at(id);
    const int from = s.computed;
    const std::vector<BlockId> before(cache_.blocks(id).begin(), cache_.blocks(id).end());
    const KvUsage usage = cache_.usage();
    const KvMetrics metrics = cache_.metrics();
    const int have = isize(before);
    const int first = from / bs_;
    const bool cow = first < have && cache_.pool().refcount(before[uz(first)]) > 1;
    const int needed = std::max(0, (end + bs_ - 1) / bs_ - have) + (cow ? 1 : 0);

    const std::optional<OutOfKvMemory> oom = cache_.reserve(id, from, end, now_);
    const std::span<const BlockId> table = cache_.blocks(id);
    if (oom) {
      ++ooms_;
      const int obtainable = obtainable_blocks();
      KV_EXPECT(std::equal(table.begin(), table.end(), before.begin(), before.end()),
                "OOM changed the table");
      KV_EXPECT(oom->needed == needed && oom->available < oom->needed,
                "OOM reports needed " + std::to_string(oom->needed) + " available " +
                    std::to_string(oom->available) + ", model needs " + std::to_string(needed));
      KV_EXPECT(needed > obtainable, "spurious OOM: needs " + std::to_string(needed) + ", " +
                                         std::to_string(obtainable) + " free or evictable");
      // On failure nothing changed: not even an eviction.
      const KvUsage now_usage = cache_.usage();
      const bool evicted = cache_.metrics().evictions != metrics.evictions;
      KV_EXPECT(!evicted && same_usage(usage, now_usage),
                "OOM changed usage: free " + std::to_string(usage.free) + "->" +
                    std::to_string(now_usage.free) + ", cached " + std::to_string(usage.cached) + "->" +
                    std::to_string(now_usage.cached) + ", in use " + std::to_string(usage.in_use) + "->" +
                    std::to_string(now_usage.in_use));
      KV_EXPECT(cache_.metrics().cow_copies == metrics.cow_copies, "OOM made a copy");
      return false;
    }
    KV_EXPECT(isize(table) == (end + bs_ - 1) / bs_,
              "reserve gave " + std::to_string(table.size()) + " blocks");
    for (int k = 0; k < have; ++k)
      if (k != first || !cow)
        KV_EXPECT(table[uz(k)] == before[uz(k)], "reserve moved block " + std::to_string(k));
    KV_EXPECT(cache_.metrics().cow_copies == metrics.cow_copies + (cow ? 1 : 0), "copy-on-write count wrong");
    if (cow) KV_EXPECT(table[uz(first)] != before[uz(first)], "copy-on-write kept the shared block");
    for (int k = first; k < isize(table); ++k) {
      const BlockId b = table[uz(k)];
      KV_EXPECT(cache_.pool().refcount(b) == 1 && !cache_.pool().indexed(b),
                "block " + std::to_string(b) + " about to be written is shared or cached");
    }
    for (int p = from; p < end; ++p)
      device_.write(table[uz(p / bs_)], p % bs_, make_slot(s.tokens[uz(p)], p, s.salt));
    s.computed = end;
    cache_.commit(id, s.tokens, end, now_);
    if (s.chain_epoch == cache_.metrics().evictions) {
      witnesses_.push_back({s.salt, head(s.tokens, end / bs_ * bs_), s.chain_epoch});
      if (witnesses_.size() > 16) witnesses_.pop_front();
    }
    return true;
  }

  void extend(SeqId id) {
    op_name_ = "extend";
    op_seq_ = id;
    ModelSeq& s = seqs_.at(id);
    if (s.needs_match) match(id);  // readmission after recompute preemption
    if (s.computed < isize(s.tokens)) return prefill_chunk(id);
    if (isize(s.tokens) >= cfg_.max_len) return finish(id);
    const int n =
        std::min(cfg_.max_len - isize(s.tokens), chance(70) ? rand_int(1, 3) : rand_int(1, 2 * bs_));
    for (int i = 0; i < n; ++i) s.tokens.push_back(rand_int(0, 3));  // sampled tokens
    compute(id, isize(s.tokens));
  }

  // Parallel sampling: the child shares every block, then both decode on their own.
  void fork(SeqId parent) {
    op_name_ = "fork";
    op_seq_ = parent;
    if (isize(seqs_) >= cfg_.max_live) return finish(parent);
    const SeqId child = next_id_++;
    cache_.fork(parent, child, now_);
    ModelSeq copy = seqs_.at(parent);
    seqs_.emplace(child, std::move(copy));
    const auto a = cache_.blocks(parent);
    const auto b = cache_.blocks(child);
    KV_EXPECT(std::equal(a.begin(), a.end(), b.begin(), b.end()), "fork: the child's table differs");
    extend(parent);
    if (seqs_.contains(child)) extend(child);
  }

  void finish(SeqId id) {
    op_name_ = "close";
    op_seq_ = id;
    cache_.close(id, now_);
    seqs_.erase(id);
    KV_EXPECT(!cache_.holds(id) && cache_.num_sequences() == seqs_.size(), "close left the sequence");
  }

  void evict() {
    op_name_ = "evict";
    const int n = rand_int(1, 8);
    const KvUsage u = cache_.usage();
    const std::int64_t evictions = cache_.metrics().evictions;
    const int done = cache_.evict(n, now_);
    const KvUsage v = cache_.usage();
    KV_EXPECT(done >= 0 && done <= n, "evict returned " + std::to_string(done));
    KV_EXPECT(done == n || v.evictable == 0, "evict stopped early with candidates left");
    KV_EXPECT(v.cached == u.cached - done && v.free == u.free + done && v.in_use == u.in_use,
              "evict accounting");
    KV_EXPECT(cache_.metrics().evictions == evictions + done, "eviction count");
  }

  void preempt_recompute(SeqId id) {
    op_name_ = "release";
    op_seq_ = id;
    cache_.release(id, now_);
    ModelSeq& s = seqs_.at(id);
    s.computed = 0;
    s.needs_match = true;
    KV_EXPECT(cache_.blocks(id).empty(), "release kept blocks");
  }

  void swap_out(SeqId id) {
    op_name_ = "swap_out";
    op_seq_ = id;
    ModelSeq& s = seqs_.at(id);
    const std::vector<BlockId> before(cache_.blocks(id).begin(), cache_.blocks(id).end());
    const int swap_free = cache_.usage().swap_free;
    const bool expected = !before.empty() && swap_free >= isize(before);
    const bool ok = cache_.swap_out(id, now_);
    KV_EXPECT(ok == expected, "swap_out returned " + std::to_string(ok) + " for " +
                                  std::to_string(before.size()) + " blocks, " + std::to_string(swap_free) +
                                  " swap slots free");
    if (!ok) {
      const auto t = cache_.blocks(id);
      KV_EXPECT(std::equal(t.begin(), t.end(), before.begin(), before.end()) && !cache_.is_swapped(id),
                "a refused swap_out changed the sequence");
      return;
    }
    s.swapped = true;
    s.swap_count = isize(before);
    KV_EXPECT(cache_.usage().swap_free == swap_free - s.swap_count, "swap slots not taken");
  }

  void swap_in(SeqId id) {
    op_name_ = "swap_in";
    op_seq_ = id;
    ModelSeq& s = seqs_.at(id);
    const int swap_free = cache_.usage().swap_free;
    const KvUsage usage = cache_.usage();
    const std::int64_t evictions = cache_.metrics().evictions;
    if (auto oom = cache_.swap_in(id, now_)) {
      ++ooms_;
      KV_EXPECT(oom->needed == s.swap_count && oom->needed > obtainable_blocks(), "swap_in OOM wrong");
      KV_EXPECT(cache_.is_swapped(id) && cache_.blocks(id).empty() && cache_.usage().swap_free == swap_free,
                "a failed swap_in changed the sequence");
      const KvUsage now_usage = cache_.usage();
      KV_EXPECT(cache_.metrics().evictions != evictions ? now_usage.in_use == usage.in_use
                                                        : same_usage(usage, now_usage),
                "a failed swap_in changed usage");
      return;
    }
    s.swapped = false;
    s.chain_epoch = cache_.metrics().evictions;  // its blocks are offered to the index again
    KV_EXPECT(cache_.usage().swap_free == swap_free + s.swap_count, "swap slots not returned");
    for (BlockId b : cache_.blocks(id))
      KV_EXPECT(cache_.pool().refcount(b) == 1 && !cache_.pool().indexed(b), "swap_in into a shared block");
  }

  void clear_at_idle() {
    op_name_ = "clear at idle";
    close_all();
    cache_.clear(now_);
    expect_empty();
  }

  void close_all() {
    for (const auto& [id, s] : seqs_) cache_.close(id, now_);
    seqs_.clear();
  }

  void expect_empty() {
    const KvUsage u = cache_.usage();
    KV_EXPECT(
        u.free == u.total && u.cached == 0 && u.in_use == 0 && u.evictable == 0 && cache_.index().size() == 0,
        "idle clear left blocks: free " + std::to_string(u.free) + " cached " + std::to_string(u.cached));
    KV_EXPECT(u.swap_free == cfg_.swap_blocks, "swap slots leaked");
  }

  // ---- checks ------------------------------------------------------------------------------

  // Blocks a reservation could get: free ones, plus cached ones that no referenced block hangs
  // below in the prefix tree (leaf-first eviction reaches exactly those).
  int obtainable_blocks() const {
    const BlockPool& pool = cache_.pool();
    const kv::PrefixIndex& index = cache_.index();
    std::vector<char> pinned(uz(pool.total()), 0);
    for (BlockId b = 0; b < pool.total(); ++b) {
      if (pool.refcount(b) == 0 || !index.contains(b)) continue;
      for (BlockId c = b; index.node(c).depth > 0;) {
        const auto up = index.block_of(index.node(c).parent);
        if (!up || pinned[uz(*up)]) break;
        pinned[uz(*up)] = 1;
        c = *up;
      }
    }
    int n = pool.free_count();
    for (BlockId b = 0; b < pool.total(); ++b)
      if (pool.refcount(b) == 0 && pool.indexed(b) && !pinned[uz(b)]) ++n;
    return n;
  }

  void verify() {
    if (const std::string e = cache_.check_invariants(); !e.empty()) fail("check_invariants: " + e);
    KV_EXPECT(device_.error().empty(), "device: " + device_.error());
    const KvUsage u = cache_.usage();
    const BlockPool& pool = cache_.pool();
    KV_EXPECT(u.free + u.cached + u.in_use == u.total && u.total == cfg_.num_blocks, "usage does not add up");
    KV_EXPECT(cache_.num_sequences() == seqs_.size(), "sequence count");

    // Reference refcounts, recounted from the tables; every computed position holds its own KV.
    std::vector<int> refs(uz(u.total), 0);
    for (const auto& [id, s] : seqs_) {
      const auto table = cache_.blocks(id);
      if (s.swapped) {
        KV_EXPECT(table.empty() && cache_.is_swapped(id) && cache_.swapped_blocks(id) == s.swap_count,
                  "swapped sequence " + std::to_string(id) + " state");
        continue;
      }
      KV_EXPECT(!cache_.is_swapped(id), "sequence " + std::to_string(id) + " swapped unexpectedly");
      KV_EXPECT(isize(table) == (s.computed + bs_ - 1) / bs_,
                "sequence " + std::to_string(id) + " has " + std::to_string(table.size()) + " blocks for " +
                    std::to_string(s.computed) + " tokens");
      for (BlockId b : table) refs[uz(b)]++;
      for (int p = 0; p < s.computed; ++p) {
        const BlockId b = table[uz(p / bs_)];
        const Slot got = device_.at(b, p % bs_);
        if (got != make_slot(s.tokens[uz(p)], p, s.salt))
          fail("sequence " + std::to_string(id) + " position " + std::to_string(p) + " reads block " +
               std::to_string(b) + " slot " + std::to_string(p % bs_) + " = " + describe(got) +
               ", expected " + describe(make_slot(s.tokens[uz(p)], p, s.salt)));
      }
    }
    // One refcount() per block: BlockPool's accessors are not free (see the report on check()).
    int in_use = 0;
    std::vector<int> rc(uz(u.total));
    for (BlockId b = 0; b < u.total; ++b) {
      rc[uz(b)] = pool.refcount(b);
      KV_EXPECT(rc[uz(b)] == refs[uz(b)], "block " + std::to_string(b) + " refcount " +
                                              std::to_string(rc[uz(b)]) + ", tables hold " +
                                              std::to_string(refs[uz(b)]));
      in_use += refs[uz(b)] > 0 ? 1 : 0;
    }
    KV_EXPECT(in_use == u.in_use, "in-use count");

    // Every indexed block holds the tokens the index claims, at its chain positions, in its salt.
    const kv::PrefixIndex& index = cache_.index();
    for (BlockId b = 0; b < u.total; ++b) {
      if (!index.contains(b)) continue;
      const auto& node = index.node(b);
      const auto tokens = index.tokens_of(b);
      const int salt = slot_salt(device_.at(b, 0));
      KV_EXPECT(device_.at(b, 0).tag >= 0 && salt < isize(salts_),
                "indexed block " + std::to_string(b) + " is poison");
      for (int j = 0; j < bs_; ++j)
        if (device_.at(b, j) != make_slot(tokens[uz(j)], node.depth * bs_ + j, salt))
          fail("indexed block " + std::to_string(b) + " slot " + std::to_string(j) + " = " +
               describe(device_.at(b, j)) + ", index says token " + std::to_string(tokens[uz(j)]) +
               " at depth " + std::to_string(node.depth));
      if (node.depth == 0) {
        KV_EXPECT(node.parent == roots_[uz(salt)],
                  "indexed block " + std::to_string(b) + " under another salt's root");
      } else {
        const auto up = index.block_of(node.parent);
        KV_EXPECT(up && slot_salt(device_.at(*up, 0)) == salt,
                  "block " + std::to_string(b) + " under a foreign parent");
      }
    }

    // Free blocks become poison, so a block handed out without being written reads as garbage.
    for (BlockId b = 0; b < u.total; ++b) {
      const bool is_free = rc[uz(b)] == 0 && !index.contains(b);  // check_invariants: indexed == contains
      if (is_free && !poisoned_[uz(b)]) device_.poison(b);
      poisoned_[uz(b)] = is_free ? 1 : 0;
    }

    const KvMetrics& m = cache_.metrics();
    KV_EXPECT(m.prefix_hit_tokens <= m.prefix_query_tokens && m.host_hit_tokens <= m.prefix_hit_tokens,
              "hit counters");
    KV_EXPECT(cfg_.host_cache_blocks > 0 ? m.host_saves == m.evictions : m.host_saves == 0, "host saves");
    KV_EXPECT(cfg_.swap_blocks > 0 || m.swapped_out_blocks == 0, "swapped without swap space");
  }

  void fail(const std::string& message) const {
    FAIL(cfg_.name << ", seed " << seed_ << ", op " << op_ << " (" << op_name_ << " of sequence " << op_seq_
                   << "): " << message);
  }

  int add_salt(std::string s) {
    roots_.push_back(kv::root_hash(s));
    salts_.push_back(std::move(s));
    return isize(salts_) - 1;
  }

  FuzzConfig cfg_;
  int bs_;
  std::uint64_t seed_;
  FakeDevice device_;  // before the cache: the cache's transfer callbacks point at it
  KvCache<P> cache_;
  std::mt19937_64 rng_;
  std::vector<char> poisoned_;
  std::map<SeqId, ModelSeq> seqs_;
  SeqId next_id_ = 1;
  std::vector<std::string> salts_;  // 0 = "", 1 = "u1", then fresh ones that must never hit
  std::vector<std::uint64_t> roots_;
  std::vector<std::vector<TokenId>> prefixes_;
  std::deque<std::pair<int, std::vector<TokenId>>> recent_;
  std::deque<Witness> witnesses_;
  double now_ = 0;
  int op_ = 0;
  const char* op_name_ = "";
  SeqId op_seq_ = 0;
  int ooms_ = 0;
};

template <class P>
void run_fuzz(int ops) {
  std::uint64_t seed = fuzz_seed();
  for (const FuzzConfig& cfg : fuzz_configs(ops)) {
    KvFuzzer<P> fuzzer(cfg, seed++);
    fuzzer.run();
    fuzzer.check_coverage();
  }
}

// Tracks candidates honestly but names a fixed block as the victim.
class BadEviction {
 public:
  explicit BadEviction(BlockId victim) : victim_(victim) {}
  void on_cached(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_hit(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_evictable(BlockId b, const BlockInfo& /*info*/) { candidates_.insert(b); }
  void on_pinned(BlockId b) { candidates_.erase(b); }
  void on_removed(BlockId b) { candidates_.erase(b); }
  [[nodiscard]] std::optional<BlockId> pick_victim(double /*now_s*/) {
    if (candidates_.empty()) return std::nullopt;
    return victim_;
  }
  [[nodiscard]] std::size_t num_candidates() const { return candidates_.size(); }

 private:
  BlockId victim_;
  std::set<BlockId> candidates_;
};
static_assert(EvictionPolicy<BadEviction>);

}  // namespace

// ---- randomized ---------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("KvCache agrees with a reference model under random traffic", "[kv]", LruEviction,
                   PrefixLifetimeEviction, CostAwareEviction, PriorityEviction) {
  run_fuzz<TestType>(fuzz_ops(kDefaultFuzzOps));
}

TEMPLATE_TEST_CASE("KvCache agrees with a reference model under long random traffic", "[kv][.long]",
                   LruEviction, PrefixLifetimeEviction, CostAwareEviction, PriorityEviction) {
  run_fuzz<TestType>(fuzz_ops(kLongFuzzOps));
}

// ---- focused ------------------------------------------------------------------------------------

TEST_CASE("prefix match covers the shared full blocks and never the last token", "[kv]") {
  Rig<> rig({.num_blocks = 64, .block_size = 16});
  const auto a = iota_tokens(1000, 40);  // 2 full blocks + 8 tokens
  CHECK(rig.admit(1, a) == 0);

  const auto b = concat(head(a, 32), {1, 2, 3, 4, 5});
  rig.cache.open(2, b, "", 0, rig.now);
  CHECK(rig.cache.peek(2, b) == 32);
  CHECK(rig.cache.match(2, b, rig.now) == 32);
  CHECK(rig.holds_content(2, b, 32));
  CHECK(rig.cache.blocks(2)[0] == rig.cache.blocks(1)[0]);
  CHECK(rig.cache.blocks(2)[1] == rig.cache.blocks(1)[1]);
  REQUIRE(rig.compute(2, b, 32, isize(b)));

  const auto c = head(a, 32);  // exactly 2 full blocks: the last token must be computed
  rig.cache.open(3, c, "", 0, rig.now);
  CHECK(rig.cache.match(3, c, rig.now) == 16);

  const auto d = concat(head(a, 20), {7, 7, 7});  // diverges inside block 1
  rig.cache.open(4, d, "", 0, rig.now);
  CHECK(rig.cache.match(4, d, rig.now) == 16);

  auto e = a;
  e[0] = 5;  // diverges in block 0: every later block differs too (chain hash)
  rig.cache.open(5, e, "", 0, rig.now);
  CHECK(rig.cache.match(5, e, rig.now) == 0);

  rig.cache.open(6, a, "u1", 0, rig.now);  // another salt shares nothing
  CHECK(rig.cache.peek(6, a) == 0);
  CHECK(rig.cache.match(6, a, rig.now) == 0);

  CHECK(rig.cache.metrics().prefix_hit_tokens == 32 + 16 + 16);
  CHECK(rig.cache.metrics().prefix_queries == 6);
  rig.require_invariants();
}

TEST_CASE("partial blocks are never indexed nor evictable", "[kv]") {
  Rig<> rig({.num_blocks = 8, .block_size = 16});
  const auto a = iota_tokens(1, 20);
  rig.cache.open(1, a, "", 0, rig.now);
  REQUIRE(rig.cache.match(1, a, rig.now) == 0);
  REQUIRE(rig.compute(1, a, 0, 15));
  CHECK(rig.cache.index().size() == 0);
  REQUIRE(rig.compute(1, a, 15, 20));
  CHECK(rig.cache.index().size() == 1);
  const std::vector<BlockId> table(rig.cache.blocks(1).begin(), rig.cache.blocks(1).end());
  REQUIRE(table.size() == 2);
  CHECK(rig.cache.pool().indexed(table[0]));
  CHECK_FALSE(rig.cache.pool().indexed(table[1]));
  rig.cache.close(1, rig.now);
  KvUsage u = rig.cache.usage();
  CHECK(u.cached == 1);
  CHECK(u.evictable == 1);
  CHECK(u.free == 7);
  CHECK(rig.cache.evict(5, rig.now) == 1);
  u = rig.cache.usage();
  CHECK(u.free == 8);
  CHECK(u.cached == 0);
  rig.require_invariants();
}

TEMPLATE_TEST_CASE("eviction goes leaf first", "[kv]", LruEviction, PrefixLifetimeEviction, CostAwareEviction,
                   PriorityEviction) {
  Rig<TestType> rig({.num_blocks = 32, .block_size = 4});
  const auto a = iota_tokens(100, 17);                     // 4 full blocks + 1 token
  const auto b = concat(head(a, 8), iota_tokens(500, 9));  // shares a's first 2 blocks
  rig.admit(1, a);
  rig.now = 1;
  CHECK(rig.admit(2, b) == 8);
  const std::vector<BlockId> chain_a(rig.cache.blocks(1).begin(), rig.cache.blocks(1).begin() + 4);
  const std::vector<BlockId> chain_b(rig.cache.blocks(2).begin(), rig.cache.blocks(2).begin() + 4);
  rig.now = 2;
  rig.cache.close(1, rig.now);
  rig.now = 3;
  rig.cache.close(2, rig.now);
  REQUIRE(rig.cache.usage().cached == 6);  // 2 shared + 2 + 2

  // Which blocks of a chain are indexed must always be a prefix of the chain.
  const auto prefix_closed = [&](const std::vector<BlockId>& chain) {
    for (std::size_t i = 1; i < chain.size(); ++i)
      if (rig.cache.index().contains(chain[i]) && !rig.cache.index().contains(chain[i - 1])) return false;
    return true;
  };
  for (int left = 6; left > 0; --left) {
    rig.now += 1;
    REQUIRE(rig.cache.evict(1, rig.now) == 1);
    CHECK(rig.cache.usage().cached == left - 1);
    CHECK(prefix_closed(chain_a));
    CHECK(prefix_closed(chain_b));
    rig.require_invariants();
  }
  CHECK(rig.cache.evict(1, rig.now) == 0);
}

TEST_CASE("host tier restores an evicted chain with its content", "[kv]") {
  Rig<> rig({.num_blocks = 16, .block_size = 4, .host_cache_blocks = 8});
  const auto a = iota_tokens(300, 9);  // 2 full blocks + 1 token
  rig.admit(1, a);
  rig.cache.close(1, rig.now);
  rig.cache.clear(rig.now);
  CHECK(rig.cache.metrics().host_saves == 2);
  CHECK(rig.cache.index().size() == 0);
  CHECK(rig.cache.usage().host_cached == 2);
  rig.poison_free_blocks();  // whatever the match returns must come from the host copy

  rig.cache.open(2, a, "", 0, rig.now);
  CHECK(rig.cache.peek(2, a) == 8);
  CHECK(rig.cache.match(2, a, rig.now) == 8);
  CHECK(rig.cache.metrics().host_hit_tokens == 8);
  CHECK(rig.holds_content(2, a, 8));
  for (BlockId b : rig.cache.blocks(2)) CHECK(rig.cache.index().contains(b));  // back in the index
  REQUIRE(rig.compute(2, a, 8, 9));
  rig.require_invariants();

  // Device holds the first block, the host the second: one lookup spans both tiers.
  rig.cache.close(2, rig.now);
  REQUIRE(rig.cache.evict(1, rig.now) == 1);
  rig.poison_free_blocks();
  rig.cache.open(3, a, "", 0, rig.now);
  CHECK(rig.cache.match(3, a, rig.now) == 8);
  CHECK(rig.cache.metrics().host_hit_tokens == 12);
  CHECK(rig.holds_content(3, a, 8));

  rig.cache.open(4, a, "u1", 0, rig.now);  // the host tier is salted too
  CHECK(rig.cache.match(4, a, rig.now) == 0);
  rig.require_invariants();
}

// With host_cache_blocks == 1 the host save of the device block evicted to make room recycles
// the host slot being restored from; the restored block must still get the KV it was found with.
TEST_CASE("host tier of one block restores the block it found", "[kv]") {
  Rig<> rig({.num_blocks = 2, .block_size = 4, .host_cache_blocks = 1});
  const auto a = iota_tokens(10, 5);
  rig.admit(1, a);
  rig.cache.close(1, rig.now);
  rig.cache.clear(rig.now);  // a's block 0 now lives only on the host
  const auto d = iota_tokens(50, 4);
  rig.admit(2, d);
  rig.cache.close(2, rig.now);  // d's block is cached on the device
  const auto e = iota_tokens(90, 1);
  rig.admit(3, e);  // holds the last free block
  REQUIRE(rig.cache.usage().free == 0);

  rig.cache.open(4, a, "", 0, rig.now);
  CHECK(rig.cache.match(4, a, rig.now) == 4);
  CHECK(rig.holds_content(4, a, 4));
  rig.require_invariants();
}

TEST_CASE("reserve reports OutOfKvMemory and changes nothing", "[kv]") {
  Rig<> rig({.num_blocks = 4, .block_size = 4});
  const auto a = iota_tokens(1, 14);  // 4 blocks, the last holds 2 tokens
  rig.admit(1, a);
  REQUIRE(rig.cache.usage().in_use == 4);

  const auto b = iota_tokens(40, 3);
  rig.cache.open(2, b, "", 0, rig.now);
  REQUIRE(rig.cache.match(2, b, rig.now) == 0);
  const KvUsage before = rig.cache.usage();
  auto oom = rig.cache.reserve(2, 0, 1, rig.now);
  REQUIRE(oom.has_value());
  CHECK(oom->needed == 1);
  CHECK(oom->available == 0);
  CHECK(rig.cache.blocks(2).empty());
  CHECK(same_usage(before, rig.cache.usage()));

  // A write into the shared last block needs a copy, and growing needs one more.
  rig.cache.fork(1, 3, rig.now);
  const std::vector<BlockId> shared(rig.cache.blocks(1).begin(), rig.cache.blocks(1).end());
  oom = rig.cache.reserve(3, 14, 15, rig.now);
  REQUIRE(oom.has_value());
  CHECK(oom->needed == 1);
  oom = rig.cache.reserve(3, 14, 17, rig.now);
  REQUIRE(oom.has_value());
  CHECK(oom->needed == 2);
  CHECK(std::equal(shared.begin(), shared.end(), rig.cache.blocks(3).begin(), rig.cache.blocks(3).end()));
  CHECK(rig.cache.metrics().cow_copies == 0);
  CHECK(same_usage(before, rig.cache.usage()));

  // Once the other sharer is gone the block is private: no copy needed.
  rig.cache.close(1, rig.now);
  CHECK_FALSE(rig.cache.reserve(3, 14, 15, rig.now).has_value());
  CHECK(rig.cache.metrics().cow_copies == 0);
  rig.require_invariants();
}

TEST_CASE("a block computed twice switches to the indexed copy", "[kv]") {
  // x computes a block identical to y's without matching it (both admitted together). On commit x
  // takes y's indexed block and frees its own, so its table follows the index chain and nothing
  // cached is ever pinned by a referenced block below it.
  Rig<> rig({.num_blocks = 3, .block_size = 4});
  const auto x = iota_tokens(1, 9);
  const auto y = head(x, 5);
  rig.cache.open(1, x, "", 0, rig.now);
  REQUIRE(rig.cache.match(1, x, rig.now) == 0);
  rig.cache.open(2, y, "", 0, rig.now);
  REQUIRE(rig.cache.match(2, y, rig.now) == 0);
  REQUIRE(rig.compute(2, y, 0, 4));
  const BlockId y0 = rig.cache.blocks(2)[0];
  REQUIRE(rig.compute(1, x, 0, 8));
  CHECK(rig.cache.blocks(1)[0] == y0);
  CHECK(rig.cache.pool().refcount(y0) == 2);
  CHECK(rig.holds_content(1, x, 8));
  CHECK(rig.cache.usage().free == 1);  // x's duplicate went back
  rig.cache.close(2, rig.now);
  CHECK(rig.cache.usage().cached == 0);  // x still holds y0
  rig.require_invariants();
}

TEST_CASE("a failed reserve evicts nothing", "[kv]") {
  Rig<> rig({.num_blocks = 4, .block_size = 4});
  const auto x = iota_tokens(1, 8);
  rig.admit(1, x);  // holds 2 blocks
  const auto w = iota_tokens(40, 5);
  rig.admit(3, w);
  rig.cache.close(3, rig.now);  // w's full block: cached and evictable
  const BlockId w0 = rig.cache.index().block_of(kv::block_hash(kv::root_hash(""), head(w, 4))).value();
  REQUIRE(rig.cache.usage().cached == 1);
  REQUIRE(rig.cache.usage().free == 1);

  const auto z = iota_tokens(70, 13);
  rig.cache.open(4, z, "", 0, rig.now);
  REQUIRE(rig.cache.match(4, z, rig.now) == 0);
  const KvUsage before = rig.cache.usage();
  const auto oom = rig.cache.reserve(4, 0, 12, rig.now);  // needs 3: one free + one cached is all
  REQUIRE(oom.has_value());
  CHECK(oom->needed == 3);
  CHECK(oom->available == 2);
  rig.require_invariants();
  CHECK(rig.cache.metrics().evictions == 0);
  CHECK(rig.cache.index().contains(w0));
  CHECK(same_usage(before, rig.cache.usage()));
  CHECK_FALSE(rig.cache.reserve(4, 0, 8, rig.now).has_value());  // two fit, evicting w's block
  CHECK(rig.cache.metrics().evictions == 1);
  rig.require_invariants();
}

TEST_CASE("swap_out refuses when swap space is short; swap_in restores content", "[kv]") {
  Rig<> rig({.num_blocks = 6, .block_size = 4, .swap_blocks = 2});
  const auto a = iota_tokens(1, 9);  // 3 blocks
  rig.admit(1, a);
  const std::vector<BlockId> table(rig.cache.blocks(1).begin(), rig.cache.blocks(1).end());
  CHECK_FALSE(rig.cache.swap_out(1, rig.now));
  CHECK(std::equal(table.begin(), table.end(), rig.cache.blocks(1).begin(), rig.cache.blocks(1).end()));
  CHECK_FALSE(rig.cache.is_swapped(1));
  CHECK(rig.cache.usage().swap_free == 2);

  const auto b = iota_tokens(50, 6);  // 2 blocks
  rig.admit(2, b);
  REQUIRE(rig.cache.swap_out(2, rig.now));
  CHECK(rig.cache.blocks(2).empty());
  CHECK(rig.cache.is_swapped(2));
  CHECK(rig.cache.swapped_blocks(2) == 2);
  CHECK(rig.cache.usage().swap_free == 0);

  // Device full: swap_in fails and keeps the swapped copy.
  const auto c = iota_tokens(90, 12);
  rig.admit(3, c);
  rig.cache.clear(rig.now);
  REQUIRE(rig.cache.usage().free == 0);
  CHECK(rig.cache.swap_in(2, rig.now).has_value());
  CHECK(rig.cache.is_swapped(2));
  CHECK(rig.cache.usage().swap_free == 0);

  rig.cache.close(3, rig.now);
  rig.cache.clear(rig.now);
  rig.poison_free_blocks();
  REQUIRE_FALSE(rig.cache.swap_in(2, rig.now).has_value());
  CHECK(rig.holds_content(2, b, 6));
  CHECK(rig.cache.usage().swap_free == 2);
  CHECK(rig.cache.metrics().swapped_in_blocks == 2);
  CHECK_THROWS_AS((void)rig.cache.swap_in(2, rig.now), Error);  // it holds KV now
  rig.require_invariants();
}

TEST_CASE("fork shares blocks and copy-on-write keeps each sequence's content", "[kv]") {
  Rig<> rig({.num_blocks = 16, .block_size = 4});
  auto a = iota_tokens(1, 10);  // the last block holds 2 tokens
  rig.admit(1, a);
  rig.cache.fork(1, 2, rig.now);
  auto b = a;
  a.push_back(111);
  b.push_back(222);
  REQUIRE(rig.compute(1, a, 10, 11));
  CHECK(rig.cache.metrics().cow_copies == 1);
  REQUIRE(rig.compute(2, b, 10, 11));
  CHECK(rig.cache.metrics().cow_copies == 1);  // the second writer owns the original by now
  CHECK(rig.cache.blocks(1)[2] != rig.cache.blocks(2)[2]);
  CHECK(rig.cache.blocks(1)[1] == rig.cache.blocks(2)[1]);
  CHECK(rig.holds_content(1, a, 11));
  CHECK(rig.holds_content(2, b, 11));

  // At a block boundary nothing is shared that gets written: no copy.
  auto c = iota_tokens(500, 8);
  rig.admit(3, c);
  rig.cache.fork(3, 4, rig.now);
  auto d = c;
  c.push_back(1);
  d.push_back(2);
  REQUIRE(rig.compute(3, c, 8, 9));
  REQUIRE(rig.compute(4, d, 8, 9));
  CHECK(rig.cache.metrics().cow_copies == 1);
  CHECK(rig.holds_content(3, c, 9));
  CHECK(rig.holds_content(4, d, 9));
  rig.require_invariants();
}

TEST_CASE("an eviction policy that picks a non-candidate makes evict throw", "[kv]") {
  for (const BlockId victim : {BlockId{0}, BlockId{-1}, BlockId{99}}) {
    Rig<BadEviction> rig({.num_blocks = 4, .block_size = 4}, BadEviction(victim));
    const auto a = iota_tokens(1, 2);
    rig.admit(1, a);  // holds block 0 (low ids first)
    REQUIRE(rig.cache.blocks(1)[0] == 0);
    const auto b = iota_tokens(20, 5);
    rig.admit(2, b);
    rig.cache.close(2, rig.now);  // one real candidate
    REQUIRE(rig.cache.usage().evictable == 1);
    CHECK_THROWS_AS(rig.cache.evict(1, rig.now), Error);
  }
}

TEST_CASE("KvCacheConfig validation", "[kv]") {
  FakeDevice dev(4, 16);
  const auto make = [&](KvCacheConfig c) { return KvCache<LruEviction>(c, LruEviction{}, dev.transfer()); };
  CHECK_THROWS_AS(make({.num_blocks = 0, .block_size = 16}), Error);
  CHECK_THROWS_AS(make({.num_blocks = 4, .block_size = 0}), Error);
  CHECK_THROWS_AS(make({.num_blocks = 4, .block_size = 1025}), Error);
  CHECK_THROWS_AS(make({.num_blocks = 4, .block_size = 16, .host_cache_blocks = -1}), Error);
  CHECK_THROWS_AS(make({.num_blocks = 4, .block_size = 16, .swap_blocks = -1}), Error);
  CHECK_NOTHROW(make({.num_blocks = 4, .block_size = 16}));
  try {
    make({.num_blocks = 0, .block_size = 16});
  } catch (const Error& e) {
    CHECK(e.code() == ErrorCode::kInvalidArgument);
  }
}

TEST_CASE("KvCache rejects misuse with typed errors", "[kv]") {
  Rig<> rig({.num_blocks = 8, .block_size = 4, .swap_blocks = 8});
  const auto a = iota_tokens(1, 6);
  rig.admit(1, a);
  CHECK_THROWS_AS(rig.cache.open(1, a, "", 0, rig.now), Error);       // already open
  CHECK_THROWS_AS(rig.cache.match(1, a, rig.now), Error);             // holds KV
  CHECK_THROWS_AS((void)rig.cache.reserve(7, 0, 1, rig.now), Error);  // unknown
  CHECK_THROWS_AS((void)rig.cache.reserve(1, 5, 4, rig.now), Error);  // from > end
  CHECK_THROWS_AS(rig.cache.fork(1, 1, rig.now), Error);              // child id taken
  REQUIRE(rig.cache.swap_out(1, rig.now));
  CHECK_THROWS_AS(rig.cache.fork(1, 2, rig.now), Error);  // swapped out
  CHECK_THROWS_AS(rig.cache.match(1, a, rig.now), Error);
  rig.require_invariants();
}

namespace {

// Chain a is cached, a request whose prompt is a's is queued (opened, not matched yet), then chain
// b is released, more recently than anything that happened to a. Returns whether a's leaf and
// b's leaf are still cached after one eviction.
template <class P>
std::pair<bool, bool> leaves_left_with_open_prompt() {
  Rig<P> rig({.num_blocks = 16, .block_size = 4});
  const auto a = iota_tokens(100, 9);  // 2 full blocks + 1 token
  const auto b = iota_tokens(200, 9);
  const std::uint64_t a0 = kv::block_hash(kv::root_hash(""), std::span(a).first(4));
  const std::uint64_t a1 = kv::block_hash(a0, std::span(a).subspan(4, 4));
  const std::uint64_t b0 = kv::block_hash(kv::root_hash(""), std::span(b).first(4));
  const std::uint64_t b1 = kv::block_hash(b0, std::span(b).subspan(4, 4));
  rig.admit(1, a);
  rig.now = 1;
  rig.cache.close(1, rig.now);
  rig.now = 2;
  rig.cache.open(3, a, "", 0, rig.now);
  rig.admit(2, b);
  rig.now = 3;
  rig.cache.close(2, rig.now);
  rig.now = 4;
  REQUIRE(rig.cache.evict(1, rig.now) == 1);
  rig.require_invariants();
  const auto cached = [&](std::uint64_t h) { return rig.cache.index().block_of(h).has_value(); };
  const std::pair<bool, bool> left{cached(a1), cached(b1)};
  if constexpr (std::is_same_v<P, PrefixLifetimeEviction>) {
    // b's first block, unwanted and just released, still goes before a's wanted leaf.
    REQUIRE(rig.cache.evict(1, rig.now) == 1);
    CHECK_FALSE(cached(b0));
    CHECK(cached(a0));
    CHECK(cached(a1));
    // Once the request leaves, a's blocks are ordinary candidates again: the leaf goes first.
    rig.cache.close(3, rig.now);
    REQUIRE(rig.cache.evict(1, rig.now) == 1);
    CHECK(cached(a0));
    CHECK_FALSE(cached(a1));
    rig.require_invariants();
  }
  return left;
}

}  // namespace

TEST_CASE("prefix lifetime evicts unwanted blocks before the prefix of an open prompt", "[kv]") {
  const auto [a_lifetime, b_lifetime] = leaves_left_with_open_prompt<PrefixLifetimeEviction>();
  CHECK(a_lifetime);
  CHECK_FALSE(b_lifetime);
  // LRU ignores demand: a's leaf, used longer ago, goes first.
  const auto [a_lru, b_lru] = leaves_left_with_open_prompt<LruEviction>();
  CHECK_FALSE(a_lru);
  CHECK(b_lru);
}

TEST_CASE("clear at idle frees every block", "[kv]") {
  Rig<PriorityEviction> rig({.num_blocks = 32, .block_size = 4, .host_cache_blocks = 4});
  for (SeqId id = 1; id <= 4; ++id)
    rig.admit(id, concat(iota_tokens(0, 8), iota_tokens(static_cast<TokenId>(id) * 100, 7)));
  for (SeqId id = 1; id <= 4; ++id) rig.cache.close(id, rig.now);
  CHECK(rig.cache.usage().cached > 0);
  rig.cache.clear(rig.now);
  const KvUsage u = rig.cache.usage();
  CHECK(u.free == u.total);
  CHECK(u.cached == 0);
  CHECK(u.evictable == 0);
  CHECK(rig.cache.index().size() == 0);
  rig.require_invariants();
}
