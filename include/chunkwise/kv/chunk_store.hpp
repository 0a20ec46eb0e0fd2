// ChunkStore: a content-addressed store of the KV of text chunks computed standalone, for prompts
// whose chunks recur but not as prefixes (RAG passages; CacheBlend, Cache-Craft). A chunk's KV is
// keyed by a 128-bit digest of its tokens, the model and a salt; the store keeps entries in host
// RAM and spills them to a directory on disk (compressed, checksummed) when RAM runs short.
// docs/chunk-store.md has the file format and the failure rules.
//
// Tiers. Host RAM and disk, each with a byte capacity. The host tier's victims are chosen by an
// EvictionPolicy (LruEviction by default) and written to disk when the disk tier is enabled; the
// disk tier drops its least recently used file. Device memory is the third tier: the backend
// integration keeps device copies keyed by ChunkKey in front of this store (get() on a device miss,
// put() when it drops one); this store only ever deals in host bytes.
//
// Failure rules. Bad arguments (an inconsistent ChunkKv, capacities that cannot hold one entry)
// and an unusable directory throw chunkwise::Error. A disk file that is corrupt, truncated, of
// another format version or of another key is a miss: it is logged (one line through
// Config::log), removed and never used. A failed disk write (disk full, directory gone) only means
// the entry is not on disk; it is logged and the store stays consistent. A hash collision is a
// miss too: entries keep their tokens and a lookup compares them.
//
// Not thread-safe: one thread at a time, like InferenceSession. A directory belongs to one live
// store; a store reopened over it finds the files already there (host entries reach the disk when
// evicted or on flush(); the destructor writes nothing). A moved-from store may only be destroyed
// or assigned to.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chunkwise/core/types.hpp"
#include "chunkwise/kv/detail/erased_eviction.hpp"
#include "chunkwise/policy/concepts.hpp"

namespace chunkwise {

// A 128-bit digest. Not cryptographic: the store never trusts it alone (it compares tokens).
struct ChunkKey {
  std::uint64_t hi = 0;
  std::uint64_t lo = 0;
  friend bool operator==(const ChunkKey&, const ChunkKey&) = default;
  friend auto operator<=>(const ChunkKey&, const ChunkKey&) = default;
  // 32 lowercase hex digits, hi first: the file name stem in the disk tier.
  [[nodiscard]] std::string hex() const;
};

struct ChunkKeyHash {
  std::size_t operator()(const ChunkKey& k) const noexcept { return static_cast<std::size_t>(k.lo ^ k.hi); }
};

// The key of a chunk: a digest of its token ids, the model id (a name and revision, or a hash of
// the weights: anything that changes the KV) and a salt (tenant, adapter). Two independent 64-bit
// lanes of splitmix64 mixing over a length-prefixed byte stream; stable across processes and
// builds (little-endian hosts), so keys of files written by one run are found by the next.
[[nodiscard]] ChunkKey chunk_key(std::span<const TokenId> tokens, std::string_view model_id,
                                 std::string_view salt = {});

// The KV of one chunk, as the model computed it with the chunk's first token at position0.
// Keys are stored after RoPE, at positions position0 .. position0 + n_tokens - 1 (what the paged
// cache holds). A loader that places the chunk at position p rotates every key by p - position0
// (RoPE rotations compose: R(p) = R(p - position0) R(position0), for any position-independent
// frequency scaling such as Llama 3's); values need nothing.
struct ChunkKv {
  std::int32_t n_tokens = 0;
  std::int32_t n_layers = 0;
  std::int32_t kv_dim = 0;      // KV heads x head dimension
  std::int32_t position0 = 0;   // position of the first token when the KV was computed, >= 0
  std::vector<TokenId> tokens;  // n_tokens ids
  // fp32, layer by layer: K [n_tokens, kv_dim] then V [n_tokens, kv_dim]; use k() and v().
  std::vector<float> data;
  // Optional per-token metadata, [n_tokens, stats_per_token()] row-major (for example a chunk's
  // attention statistics for Cache-Craft's recompute choice); empty when there is none.
  std::vector<float> token_stats;

  // An entry of zeros of the given shape (the caller fills k() and v()).
  [[nodiscard]] static ChunkKv zeros(std::span<const TokenId> tokens, int n_layers, int kv_dim,
                                     int position0 = 0);
  // Tokens [from, to) as an entry of their own (computed at position0 + from), stats included; for
  // a chunk whose first rows a prompt already holds. Throws Error(kInvalidArgument) unless
  // 0 <= from < to <= n_tokens.
  [[nodiscard]] ChunkKv rows(std::int32_t from, std::int32_t to) const;
  [[nodiscard]] std::span<float> k(int layer) { return slice(layer, 0); }
  [[nodiscard]] std::span<float> v(int layer) { return slice(layer, 1); }
  [[nodiscard]] std::span<const float> k(int layer) const { return slice(layer, 0); }
  [[nodiscard]] std::span<const float> v(int layer) const { return slice(layer, 1); }
  [[nodiscard]] int stats_per_token() const {
    return n_tokens > 0 ? static_cast<int>(token_stats.size() / static_cast<std::size_t>(n_tokens)) : 0;
  }
  // The bytes the host tier accounts for this entry: tokens, data and stats.
  [[nodiscard]] std::size_t bytes() const {
    return (tokens.size() + data.size() + token_stats.size()) * sizeof(float);
  }
  // Throws Error(kInvalidArgument) unless the sizes are positive and agree with each other.
  void validate() const;

 private:
  [[nodiscard]] std::span<float> slice(int layer, int which);
  [[nodiscard]] std::span<const float> slice(int layer, int which) const;
};

enum class ChunkTier { kNone, kHost, kDisk };

// Cumulative counts since the store was made, plus what each tier holds now.
struct ChunkStoreStats {
  std::int64_t puts = 0;
  std::int64_t host_hits = 0;
  std::int64_t disk_hits = 0;            // found on disk (and promoted to host)
  std::int64_t misses = 0;               // every get() that returned nullptr
  std::int64_t collisions = 0;           // a key held other tokens (on get or put)
  std::int64_t corrupt_files = 0;        // files dropped as corrupt, truncated, wrong version or key
  std::int64_t host_evictions = 0;       // entries dropped from RAM (spilled or not)
  std::int64_t disk_evictions = 0;       // files deleted to make room
  std::int64_t disk_writes = 0;          // files written
  std::int64_t disk_write_failures = 0;  // spills that could not be written (logged)
  std::int64_t host_entries = 0;
  std::int64_t disk_entries = 0;
  std::size_t host_bytes = 0;  // ChunkKv::bytes() of the entries in RAM
  std::size_t disk_bytes = 0;  // file sizes
};

class ChunkStore {
 public:
  struct Config {
    std::string model_id;  // key_for() and put(ChunkKv) key with these two
    std::string salt;
    std::size_t host_capacity_bytes = std::size_t{1} << 30;
    std::filesystem::path disk_dir;  // empty: no disk tier; created when missing
    std::size_t disk_capacity_bytes = std::size_t{8} << 30;
    int compression_level = 1;      // zlib, 0 (stored) .. 9; 1 is fast and gains most of what fp32 KV gives
    std::function<double()> clock;  // seconds; default: steady clock from construction
    std::function<void(std::string_view)> log;  // one line per event; default: stderr
  };

  // With LruEviction in RAM. Throws Error(kInvalidArgument) for a host capacity of 0, a disk
  // capacity below one smallest file or a compression level outside 0..9, and Error(kIo) when the
  // disk directory cannot be created or written. Files already in it are indexed (their headers
  // are checked; bad ones are logged and removed; leftover temporary files are removed).
  explicit ChunkStore(Config config);
  // The same with any EvictionPolicy for the host tier.
  template <EvictionPolicy P>
  ChunkStore(Config config, P host_eviction)
      : ChunkStore(std::move(config), detail::ErasedEviction(std::move(host_eviction))) {}
  ~ChunkStore();
  ChunkStore(ChunkStore&&) noexcept;
  ChunkStore& operator=(ChunkStore&&) noexcept;
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  // chunk_key(tokens, config.model_id, config.salt).
  [[nodiscard]] ChunkKey key_for(std::span<const TokenId> tokens) const;

  // Stores kv in RAM under key_for(kv.tokens) (the first form) or under key; returns the key.
  // Replaces what any tier held under the key. Makes room by evicting (and spilling) others.
  // Throws Error(kInvalidArgument) for an inconsistent kv or one larger than the host capacity.
  ChunkKey put(ChunkKv kv);
  void put(const ChunkKey& key, ChunkKv kv);

  // The KV stored under key for exactly these tokens: from RAM, or from disk (then kept in RAM
  // too); nullptr on a miss. The pointer stays valid after the entry is evicted.
  [[nodiscard]] std::shared_ptr<const ChunkKv> get(const ChunkKey& key, std::span<const TokenId> tokens);

  // Writes every host entry that has no file yet to the disk tier (which may drop older files to
  // make room), so that a store reopened over the directory finds them. Nothing without a disk tier.
  void flush();

  // Where key is indexed now, without reading or checking anything: for reuse policies that only
  // plan. A later get() can still miss (a corrupt file, other tokens under the key).
  [[nodiscard]] ChunkTier tier(const ChunkKey& key) const;
  [[nodiscard]] bool contains(const ChunkKey& key) const { return tier(key) != ChunkTier::kNone; }

  [[nodiscard]] ChunkStoreStats stats() const;
  [[nodiscard]] const Config& config() const;

  // Recounts bytes, entries and the eviction policy's candidates; returns what disagrees, or "".
  [[nodiscard]] std::string check_invariants() const;

 private:
  struct Impl;
  ChunkStore(Config config, detail::ErasedEviction host_eviction);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chunkwise
