// KvCache: the KV memory layer. It owns the block pool, the prefix index, the eviction policy,
// the host tier and swap space, and a block table per sequence. The scheduler drives it with
// sequence-level operations:
//   open / close     a request enters / leaves (its prompt counts as demand for its prefix);
//   match            at admission, take the longest cached prefix (device, then host tier);
//   reserve          blocks for the next tokens, evicting cached blocks and copying a shared
//                    block before it is written (copy-on-write); all or nothing;
//   commit           after a forward pass, index the blocks that filled up;
//   fork             a second sequence shares every block (parallel sampling);
//   release          drop a sequence's blocks (recompute preemption); swap_out / swap_in move
//                    them to host RAM and back.
// It never touches the model; KV bytes move through KvTransfer, so it is tested without one.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "chunkwise/core/error.hpp"
#include "chunkwise/core/types.hpp"
#include "chunkwise/kv/block_hash.hpp"
#include "chunkwise/kv/block_pool.hpp"
#include "chunkwise/kv/host_kv_store.hpp"
#include "chunkwise/kv/kv_types.hpp"
#include "chunkwise/kv/prefix_index.hpp"
#include "chunkwise/policy/concepts.hpp"

// Recount every invariant after each mutating call: on in debug builds and in the sanitizer
// build (which defines it to 1), off in release builds.
#ifndef CHUNKWISE_KV_CHECKS
#ifdef NDEBUG
#define CHUNKWISE_KV_CHECKS 0
#else
#define CHUNKWISE_KV_CHECKS 1
#endif
#endif

namespace chunkwise {

template <EvictionPolicy Eviction>
class KvCache {
 public:
  using SeqId = std::uint64_t;

  KvCache(const KvCacheConfig& config, Eviction policy, KvTransfer transfer)
      : config_(validated(config)),
        pool_(config.num_blocks),
        index_(config.num_blocks, config.block_size),
        policy_(std::move(policy)),
        transfer_(validated(std::move(transfer), config)),
        host_(config.host_cache_blocks, transfer_.bytes_per_block),
        swap_(config.swap_blocks, transfer_.bytes_per_block) {}

  // ---- sequences -------------------------------------------------------------------------

  // A request enters with its prompt; until close() its full prompt blocks count as demand.
  void open(SeqId id, std::span<const TokenId> prompt, std::string_view salt, int priority, double now_s) {
    check(!seqs_.contains(id), ErrorCode::kInvalidArgument,
          [&] { return "KV sequence " + std::to_string(id) + " already open"; });
    Seq& s = seqs_[id];
    s.root = kv::root_hash(salt);
    s.priority = priority;
    extend_hashes(s, prompt, static_cast<int>(prompt.size()) / bs());
    s.demand_blocks = static_cast<int>(s.hashes.size());
    add_demand(s, +1, now_s);
    debug_check();
  }

  // Drops every block and swap slot of the sequence and forgets it.
  void close(SeqId id, double now_s) {
    Seq& s = seq(id);
    release(id, now_s);
    for (int slot : s.swap_slots) swap_.release(slot);
    add_demand(s, -1, now_s);
    seqs_.erase(id);
    debug_check();
  }

  // A new sequence that shares every block of `parent` (its tokens are the parent's too).
  void fork(SeqId parent, SeqId child, double now_s) {
    check(!seqs_.contains(child), ErrorCode::kInvalidArgument,
          [&] { return "KV sequence " + std::to_string(child) + " already open"; });
    const Seq& p = seq(parent);
    check(p.swap_slots.empty(), ErrorCode::kInvalidArgument, "cannot fork a swapped-out sequence");
    Seq s = p;
    for (BlockId b : s.blocks) pool_.retain(b);
    seqs_.emplace(child, std::move(s));
    add_demand(seqs_.at(child), +1, now_s);
    debug_check();
  }

  // What admitting `tokens` would find cached: the tokens (whole blocks, at most all but the last
  // token, whose logits the caller needs) and how many blocks the match would take out of
  // available(): cached blocks nobody holds (pinning them removes them from the evictable set) and
  // host-tier blocks (loaded into newly allocated ones). Retains nothing.
  struct PrefixPeek {
    int tokens = 0;
    int blocks_taken = 0;
  };
  [[nodiscard]] PrefixPeek peek_prefix(SeqId id, std::span<const TokenId> tokens) {
    if (!config_.prefix_caching) return {};
    Seq& s = seq(id);
    const int limit = (static_cast<int>(tokens.size()) - 1) / bs();
    extend_hashes(s, tokens, limit);
    PrefixPeek p;
    int i = 0;
    for (; i < limit; ++i) {
      const auto b = index_.find(s.hashes[ui(i)], parent_hash(s, i), block_tokens(tokens, i));
      if (!b) break;
      if (pool_.refcount(*b) == 0) ++p.blocks_taken;
    }
    for (; i < limit && host_.capacity() > 0; ++i) {
      if (!host_.find(s.hashes[ui(i)], parent_hash(s, i), block_tokens(tokens, i))) break;
      ++p.blocks_taken;
    }
    p.tokens = i * bs();
    return p;
  }
  [[nodiscard]] int peek(SeqId id, std::span<const TokenId> tokens) { return peek_prefix(id, tokens).tokens; }

  // Admission: the sequence (holding no blocks) takes the longest cached prefix of `tokens`,
  // restoring host-tier blocks onto the device, and returns how many tokens it covers.
  int match(SeqId id, std::span<const TokenId> tokens, double now_s) {
    Seq& s = seq(id);
    check(s.blocks.empty() && s.swap_slots.empty(), ErrorCode::kInvalidArgument,
          "prefix match for a sequence that already holds KV");
    metrics_.prefix_queries++;
    metrics_.prefix_query_tokens += static_cast<std::int64_t>(tokens.size());
    if (!config_.prefix_caching) return 0;
    const int limit = (static_cast<int>(tokens.size()) - 1) / bs();
    extend_hashes(s, tokens, limit);
    int i = 0;
    for (; i < limit; ++i) {
      auto b = index_.find(s.hashes[ui(i)], parent_hash(s, i), block_tokens(tokens, i));
      if (!b) break;
      take_cached(s, *b, now_s);
    }
    for (; i < limit && host_.capacity() > 0; ++i) {
      auto bytes = host_.find(s.hashes[ui(i)], parent_hash(s, i), block_tokens(tokens, i));
      if (!bytes) break;
      // Allocating may evict a device block into the host tier, which may reuse this slot.
      host_scratch_.assign(bytes->begin(), bytes->end());
      auto b = allocate_one(now_s);
      if (!b) break;
      transfer_.load(*b, host_scratch_);
      s.blocks.push_back(*b);
      index_block(s, i, block_tokens(tokens, i), now_s);  // its parent is the block before: it rejoins
      metrics_.host_hit_tokens += bs();
    }
    s.indexed = i;
    metrics_.prefix_hit_tokens += static_cast<std::int64_t>(i) * bs();
    debug_check();
    return i * bs();
  }

  // Makes the sequence's table hold tokens [0, end) and writable from `from`: a shared block
  // at `from` is copied first. Evicts cached blocks as needed. On failure nothing changed.
  [[nodiscard]] std::optional<OutOfKvMemory> reserve(SeqId id, int from, int end, double now_s) {
    Seq& s = seq(id);
    check(from >= 0 && from <= end, ErrorCode::kInvalidArgument, "bad KV reserve range");
    const int first = from / bs();
    const bool cow = shared_at(s, first);
    const int needed = blocks_to_write(s, from, end);
    if (needed == 0) return std::nullopt;  // most decode steps: the last block has room
    if (needed > available()) return OutOfKvMemory{needed, available()};
    std::vector<BlockId> got;
    for (int k = 0; k < needed; ++k) {
      auto b = allocate_one(now_s);
      if (!b) {  // a policy that finds no victim among cached blocks: give back and report
        for (BlockId g : got) pool_.release(g);
        return OutOfKvMemory{needed, k};
      }
      got.push_back(*b);
    }
    std::size_t next = 0;
    if (cow) {
      const BlockId shared = s.blocks[ui(first)];
      const BlockId own = got[next++];
      transfer_.copy(shared, own);
      pool_.release(shared);  // still referenced by the other sharer(s)
      s.blocks[ui(first)] = own;
      metrics_.cow_copies++;
    }
    for (; next < got.size(); ++next) s.blocks.push_back(got[next]);
    debug_check();
    return std::nullopt;
  }

  // After a forward pass computed tokens [0, computed): index the blocks that are now full.
  void commit(SeqId id, std::span<const TokenId> tokens, int computed, double now_s) {
    if (!config_.prefix_caching) return;
    Seq& s = seq(id);
    const int full = std::min(std::min(computed, s.index_limit) / bs(), static_cast<int>(s.blocks.size()));
    if (full <= s.indexed || s.chain_ended) return;  // no block filled up: most decode steps
    extend_hashes(s, tokens, full);
    // A table is an indexed chain followed by private blocks; the chain grows in order and
    // stops for good where it cannot (a hash collision).
    for (int i = s.indexed; i < full && !s.chain_ended; ++i)
      if (!index_block(s, i, block_tokens(tokens, i), now_s) &&
          !adopt_indexed(s, i, block_tokens(tokens, i), now_s))
        s.chain_ended = true;
    s.indexed = std::max(s.indexed, full);
    debug_check();
  }

  // Blocks holding any of tokens [tokens, ...) of the sequence are never offered to the prefix
  // index: their KV is not what a prefill of those tokens computes (reused chunk KV, CacheBlend),
  // so another request must not take it as an exact prefix. The limit only ever moves down.
  void limit_indexing(SeqId id, int tokens) {
    Seq& s = seq(id);
    s.index_limit = std::min(s.index_limit, std::max(tokens, 0));
  }

  // Drops the sequence's blocks, tail first; indexed ones stay cached (recompute preemption).
  void release(SeqId id, double now_s) {
    Seq& s = seq(id);
    for (auto it = s.blocks.rbegin(); it != s.blocks.rend(); ++it) unref(*it, now_s);
    s.blocks.clear();
    s.indexed = 0;
    s.chain_ended = false;
    debug_check();
  }

  // Copies the sequence's blocks to host swap space and releases them; false (and no change)
  // when swap space is short.
  bool swap_out(SeqId id, double now_s) {
    Seq& s = seq(id);
    if (s.blocks.empty() || swap_.free_count() < static_cast<int>(s.blocks.size())) return false;
    for (BlockId b : s.blocks) {
      const int slot = *swap_.allocate();
      transfer_.save(b, swap_.bytes(slot));
      s.swap_slots.push_back(slot);
    }
    metrics_.swapped_out_blocks += static_cast<std::int64_t>(s.blocks.size());
    release(id, now_s);
    return true;
  }

  // Brings swapped blocks back into fresh device blocks. They are re-offered to the prefix index
  // on the next commit (as duplicates where the original is still cached).
  [[nodiscard]] std::optional<OutOfKvMemory> swap_in(SeqId id, double now_s) {
    Seq& s = seq(id);
    check(s.blocks.empty(), ErrorCode::kInvalidArgument, "swap-in of a sequence that holds KV");
    const int n = static_cast<int>(s.swap_slots.size());
    if (auto oom = reserve(id, 0, n * bs(), now_s)) return oom;
    for (int i = 0; i < n; ++i) {
      transfer_.load(s.blocks[ui(i)], swap_.bytes(s.swap_slots[ui(i)]));
      swap_.release(s.swap_slots[ui(i)]);
    }
    s.swap_slots.clear();
    metrics_.swapped_in_blocks += n;
    debug_check();
    return std::nullopt;
  }

  // Gives up the swapped copy of a sequence (it will be recomputed instead).
  void discard_swap(SeqId id) {
    Seq& s = seq(id);
    for (int slot : s.swap_slots) swap_.release(slot);
    s.swap_slots.clear();
  }

  // Blocks reserve(id, from, end) would take: new ones plus a copy of a shared block at `from`.
  [[nodiscard]] int blocks_to_write(SeqId id, int from, int end) const {
    return blocks_to_write(seq(id), from, end);
  }

  // ---- cache -----------------------------------------------------------------------------

  // Evicts up to n cached blocks; returns how many went.
  int evict(int n, double now_s) {
    int done = 0;
    while (done < n && evict_one(now_s)) ++done;
    debug_check();
    return done;
  }

  // Evicts every evictable cached block (at idle this empties the cache).
  void clear(double now_s) {
    while (evict_one(now_s)) {
    }
    debug_check();
  }

  // ---- views -----------------------------------------------------------------------------

  [[nodiscard]] std::span<const BlockId> blocks(SeqId id) const { return seq(id).blocks; }
  [[nodiscard]] bool is_swapped(SeqId id) const { return !seq(id).swap_slots.empty(); }
  [[nodiscard]] int swapped_blocks(SeqId id) const { return static_cast<int>(seq(id).swap_slots.size()); }
  [[nodiscard]] bool holds(SeqId id) const { return seqs_.contains(id); }
  [[nodiscard]] std::size_t num_sequences() const { return seqs_.size(); }
  // Blocks a reservation can obtain: free ones plus cached ones (which eviction frees).
  [[nodiscard]] int available() const { return pool_.free_count() + pool_.cached_count(); }
  [[nodiscard]] int block_size() const { return config_.block_size; }
  [[nodiscard]] const KvCacheConfig& config() const { return config_; }
  [[nodiscard]] const KvMetrics& metrics() const { return metrics_; }
  [[nodiscard]] const BlockPool& pool() const { return pool_; }
  [[nodiscard]] const kv::PrefixIndex& index() const { return index_; }
  [[nodiscard]] const Eviction& policy() const { return policy_; }
  [[nodiscard]] KvUsage usage() const {
    return KvUsage{pool_.total(),
                   pool_.free_count(),
                   pool_.cached_count(),
                   pool_.in_use(),
                   static_cast<int>(policy_.num_candidates()),
                   static_cast<int>(host_.size()),
                   swap_.free_count()};
  }

  // Every accounting invariant, recounted from scratch: empty when they hold, else what broke.
  // O(blocks + table entries); tests call it after every operation, and so does every mutating
  // call when CHUNKWISE_KV_CHECKS is on.
  [[nodiscard]] std::string check_invariants() const {
    if (!pool_.invariants_hold()) return "block pool: free/cached/in-use accounting broken";
    std::vector<int> refs(static_cast<std::size_t>(pool_.total()), 0);
    for (const auto& [id, s] : seqs_)
      for (BlockId b : s.blocks) refs[static_cast<std::size_t>(b)]++;
    std::vector<int> children(refs.size(), 0);
    std::size_t indexed = 0;
    int candidates = 0;
    for (BlockId b = 0; b < pool_.total(); ++b) {
      if (pool_.refcount(b) != refs[ui(b)])
        return "block " + std::to_string(b) + ": refcount " + std::to_string(pool_.refcount(b)) +
               " but held by " + std::to_string(refs[ui(b)]) + " sequence(s)";
      if (pool_.indexed(b) != index_.contains(b))
        return "block " + std::to_string(b) + ": index flag mismatch";
      if (!index_.contains(b)) continue;
      ++indexed;
      const auto& n = index_.node(b);
      if (n.depth > 0) {
        auto up = index_.block_of(n.parent);
        if (!up) return "block " + std::to_string(b) + ": indexed without its parent";
        children[ui(*up)]++;
      }
    }
    if (indexed != index_.size()) return "prefix index size mismatch";
    for (BlockId b = 0; b < pool_.total(); ++b) {
      if (!index_.contains(b)) continue;
      if (index_.node(b).children != children[ui(b)])
        return "block " + std::to_string(b) + ": child count wrong";
      if (is_candidate(b)) ++candidates;
      // A referenced block's ancestors are referenced too, so every cached block can be evicted.
      if (pool_.refcount(b) > 0 && index_.node(b).depth > 0) {
        const BlockId up = *index_.block_of(index_.node(b).parent);
        if (pool_.refcount(up) == 0)
          return "cached block " + std::to_string(up) + " is pinned by referenced child " + std::to_string(b);
      }
    }
    if (static_cast<std::size_t>(candidates) != policy_.num_candidates())
      return "evictable count " + std::to_string(policy_.num_candidates()) + " but recount gives " +
             std::to_string(candidates);
    return {};
  }

 private:
  struct Seq {
    std::vector<BlockId> blocks;
    std::vector<std::uint64_t> hashes;  // chain hash of each full block of the tokens seen so far
    std::vector<int> swap_slots;
    std::uint64_t root = 0;
    int indexed = 0;           // leading full blocks already offered to the index
    bool chain_ended = false;  // a block could neither join nor adopt the index (collision)
    int index_limit = std::numeric_limits<int>::max();  // tokens past it are never indexed
    int priority = 0;
    int demand_blocks = 0;  // leading hashes counted as demand
  };

  static const KvCacheConfig& validated(const KvCacheConfig& c) {
    check(c.num_blocks > 0, ErrorCode::kInvalidArgument, "KV cache: num_blocks must be > 0");
    check(c.block_size >= 1 && c.block_size <= 1024, ErrorCode::kInvalidArgument,
          "KV cache: block_size must be in [1, 1024]");
    check(c.host_cache_blocks >= 0 && c.swap_blocks >= 0, ErrorCode::kInvalidArgument,
          "KV cache: host_cache_blocks and swap_blocks must be >= 0");
    return c;
  }
  static KvTransfer validated(KvTransfer t, const KvCacheConfig& c) {
    check(t.bytes_per_block > 0 || (c.host_cache_blocks == 0 && c.swap_blocks == 0),
          ErrorCode::kInvalidArgument,
          "KV cache: a host tier or swap space needs a transfer with bytes_per_block > 0");
    check(t.copy && t.save && t.load, ErrorCode::kInvalidArgument,
          "KV cache: the transfer needs copy, save and load");
    return t;
  }
  static std::size_t ui(int i) { return static_cast<std::size_t>(i); }
  [[nodiscard]] int bs() const { return config_.block_size; }

  Seq& seq(SeqId id) {
    auto it = seqs_.find(id);
    check(it != seqs_.end(), ErrorCode::kInvalidArgument,
          [&] { return "unknown KV sequence " + std::to_string(id); });
    return it->second;
  }
  const Seq& seq(SeqId id) const { return const_cast<KvCache*>(this)->seq(id); }

  std::span<const TokenId> block_tokens(std::span<const TokenId> tokens, int i) const {
    return tokens.subspan(ui(i) * ui(bs()), ui(bs()));
  }
  static std::uint64_t parent_hash(const Seq& s, int i) { return i == 0 ? s.root : s.hashes[ui(i - 1)]; }
  void extend_hashes(Seq& s, std::span<const TokenId> tokens, int n) {
    while (static_cast<int>(s.hashes.size()) < n) {
      const int i = static_cast<int>(s.hashes.size());
      s.hashes.push_back(kv::block_hash(parent_hash(s, i), block_tokens(tokens, i)));
    }
  }

  [[nodiscard]] bool shared_at(const Seq& s, int i) const {
    return i < static_cast<int>(s.blocks.size()) && pool_.refcount(s.blocks[ui(i)]) > 1;
  }
  [[nodiscard]] int blocks_to_write(const Seq& s, int from, int end) const {
    const int grow = std::max(0, (end + bs() - 1) / bs() - static_cast<int>(s.blocks.size()));
    return grow + (shared_at(s, from / bs()) ? 1 : 0);
  }

  [[nodiscard]] bool is_candidate(BlockId b) const {
    return pool_.refcount(b) == 0 && index_.contains(b) && index_.node(b).children == 0;
  }
  [[nodiscard]] BlockInfo info(BlockId b, double now_s) const {
    const auto& n = index_.node(b);
    BlockInfo i;
    i.now_s = now_s;
    i.last_use_s = n.last_use_s;
    i.depth = n.depth;
    i.tokens = bs();
    i.tokens_before = static_cast<std::int64_t>(n.depth) * bs();
    i.hits = n.hits;
    i.priority = n.priority;
    auto d = demand_.find(n.hash);
    i.demand = d == demand_.end() ? 0 : d->second;
    i.bytes = transfer_.bytes_per_block;
    return i;
  }

  void take_cached(Seq& s, BlockId b, double now_s) {
    if (is_candidate(b)) policy_.on_pinned(b);
    pool_.retain(b);
    auto& n = index_.node(b);
    n.hits++;
    n.last_use_s = now_s;
    n.priority = std::max(n.priority, s.priority);
    policy_.on_hit(b, info(b, now_s));
    s.blocks.push_back(b);
  }

  // Offers block i of the sequence to the index; true when it was added.
  bool index_block(Seq& s, int i, std::span<const TokenId> tokens, double now_s) {
    const BlockId b = s.blocks[ui(i)];
    if (pool_.indexed(b)) return false;  // shared with a fork that indexed it already
    const std::uint64_t parent = parent_hash(s, i);
    // Only below the sequence's own chain: its parent is then referenced (by s), never a candidate.
    if (i > 0 && index_.block_of(parent) != s.blocks[ui(i - 1)]) return false;
    if (index_.insert(b, s.hashes[ui(i)], parent, i, tokens) != kv::PrefixIndex::Insert::kAdded) return false;
    pool_.mark_indexed(b);
    index_.node(b).priority = s.priority;
    index_.node(b).last_use_s = now_s;
    policy_.on_cached(b, info(b, now_s));
    return true;
  }

  // Block i of s holds the same tokens as an indexed block (computed twice at once, or swapped
  // back in): every sequence holding it there (s and its forks) switches to the indexed copy, and
  // the duplicate is freed. Tables then follow the index chain: a referenced block's ancestors
  // are referenced, no cached block is pinned, and every cached block can really be evicted
  // (available() is exact). False when there is no such copy (a hash collision).
  bool adopt_indexed(Seq& s, int i, std::span<const TokenId> tokens, double now_s) {
    const BlockId own = s.blocks[ui(i)];
    if (pool_.indexed(own)) return true;  // a fork indexed this very block
    const auto b = index_.find(s.hashes[ui(i)], parent_hash(s, i), tokens);
    if (!b) return false;
    if (is_candidate(*b)) policy_.on_pinned(*b);
    index_.node(*b).last_use_s = now_s;
    auto switch_over = [&](Seq& t) {
      pool_.retain(*b);
      t.blocks[ui(i)] = *b;
      unref(own, now_s);
    };
    if (pool_.refcount(own) == 1) {
      switch_over(s);
      return true;
    }
    for (auto& [id, t] : seqs_)  // rare: a duplicate shared with forks
      if (static_cast<int>(t.blocks.size()) > i && t.blocks[ui(i)] == own) switch_over(t);
    return true;
  }

  void unref(BlockId b, double now_s) {
    if (pool_.release(b) == 0 && pool_.indexed(b)) {
      index_.node(b).last_use_s = now_s;
      if (is_candidate(b)) policy_.on_evictable(b, info(b, now_s));
    }
  }

  std::optional<BlockId> allocate_one(double now_s) {
    if (auto b = pool_.allocate()) return b;
    if (!evict_one(now_s)) return std::nullopt;
    return pool_.allocate();
  }

  bool evict_one(double now_s) {
    const std::optional<BlockId> v = policy_.pick_victim(now_s);
    if (!v) return false;
    check(*v >= 0 && *v < pool_.total() && is_candidate(*v), ErrorCode::kInvalidArgument, [&] {
      return "eviction policy chose block " + std::to_string(*v) +
             ", which is not an unreferenced cached leaf";
    });
    const auto& n = index_.node(*v);
    if (host_.capacity() > 0) {
      host_.put(n.hash, n.parent, index_.tokens_of(*v),
                [&](std::span<std::byte> dst) { transfer_.save(*v, dst); });
      metrics_.host_saves++;
    }
    policy_.on_removed(*v);
    const std::optional<BlockId> up = index_.remove(*v);
    pool_.drop_cached(*v);
    metrics_.evictions++;
    if (up && is_candidate(*up)) policy_.on_evictable(*up, info(*up, now_s));
    return true;
  }

  // Counts (delta = +1) or uncounts (-1) the sequence's prompt blocks as wanted, re-reporting
  // cached candidates whose demand changed so that lifetime-aware policies can re-rank them.
  void add_demand(const Seq& s, int delta, double now_s) {
    for (int i = 0; i < s.demand_blocks; ++i) {
      const std::uint64_t h = s.hashes[ui(i)];
      auto it = demand_.try_emplace(h, 0).first;
      it->second += delta;
      if (it->second == 0) demand_.erase(it);
      if (auto b = index_.block_of(h); b && is_candidate(*b)) policy_.on_evictable(*b, info(*b, now_s));
    }
  }

  void debug_check() const {
#if CHUNKWISE_KV_CHECKS
    if (const std::string e = check_invariants(); !e.empty())
      throw Error(ErrorCode::kInvalidArgument, "KV cache invariant broken: " + e);
#endif
  }

  KvCacheConfig config_;
  BlockPool pool_;
  kv::PrefixIndex index_;
  Eviction policy_;
  KvTransfer transfer_;
  kv::HostKvTier host_;
  kv::HostBlockStore swap_;
  std::unordered_map<SeqId, Seq> seqs_;
  std::unordered_map<std::uint64_t, int> demand_;  // chain hash -> open requests containing it
  KvMetrics metrics_;
  std::vector<std::byte> host_scratch_;  // a host-tier block on its way back to the device
};

}  // namespace chunkwise
