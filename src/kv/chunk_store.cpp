// ChunkStore: host tier (type-erased eviction policy over dense entry ids), disk tier (one file
// per key, LRU by last use), and the rules that keep a bad file from ever being used.
#include "chunkwise/kv/chunk_store.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <list>
#include <optional>
#include <unordered_map>

#include "chunkwise/core/error.hpp"
#include "chunkwise/kv/detail/chunk_file.hpp"
#include "chunkwise/policy/eviction/lru_eviction.hpp"

namespace chunkwise {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kSuffix = ".ckv";
constexpr std::string_view kTmpMark = ".ckv.tmp";
// The smallest file the format can produce is a little over the header; a disk tier that cannot
// hold this much cannot hold any entry.
constexpr std::size_t kMinDiskCapacity = detail::kChunkFileHeaderBytes + 64;

std::optional<ChunkKey> key_from_stem(std::string_view stem) {
  if (stem.size() != 32) return std::nullopt;
  ChunkKey k;
  for (std::size_t i = 0; i < 32; ++i) {
    const char c = stem[i];
    std::uint64_t d = 0;
    if (c >= '0' && c <= '9') {
      d = static_cast<std::uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<std::uint64_t>(c - 'a' + 10);
    } else {
      return std::nullopt;
    }
    std::uint64_t& half = i < 16 ? k.hi : k.lo;
    half = (half << 4) | d;
  }
  return k;
}

std::string errno_text(int err) {
  return std::strerror(err);
}

// Reads up to n bytes from the start of path; nullopt (and why) when it cannot be opened or read.
std::optional<std::vector<std::byte>> read_prefix(const fs::path& path, std::size_t n, std::string& why) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    why = "cannot open: " + errno_text(errno);
    return std::nullopt;
  }
  std::vector<std::byte> buf(n);
  const std::size_t got = std::fread(buf.data(), 1, n, f);
  const bool err = std::ferror(f) != 0;
  std::fclose(f);
  if (err) {
    why = "read error";
    return std::nullopt;
  }
  buf.resize(got);
  return buf;
}

}  // namespace

struct ChunkStore::Impl {
  struct HostEntry {
    std::shared_ptr<const ChunkKv> kv;
    BlockId id = 0;
    std::int64_t hits = 0;
    double last_use_s = 0;
    std::size_t bytes = 0;
    bool on_disk = false;  // a file in the disk tier holds this same KV
  };
  struct DiskEntry {
    std::uint64_t bytes = 0;
    std::list<ChunkKey>::iterator lru;
  };

  Impl(Config c, detail::ErasedEviction p) : config(std::move(c)), policy(std::move(p)) {}

  Config config;
  detail::ErasedEviction policy;
  std::unordered_map<ChunkKey, HostEntry, ChunkKeyHash> host;
  std::vector<std::optional<ChunkKey>> id_keys;  // by entry id: the key it holds now
  std::vector<BlockId> free_ids;
  std::size_t host_bytes = 0;
  std::unordered_map<ChunkKey, DiskEntry, ChunkKeyHash> disk;
  std::list<ChunkKey> disk_lru;  // most recently used first
  std::uint64_t disk_bytes = 0;
  std::uint64_t tmp_counter = 0;
  ChunkStoreStats counts;  // cumulative counters only; stats() adds the sizes

  [[nodiscard]] bool disk_enabled() const { return !config.disk_dir.empty(); }
  [[nodiscard]] double now() const { return config.clock(); }
  void log(const std::string& line) const { config.log(line); }
  [[nodiscard]] fs::path path_of(const ChunkKey& k) const {
    return config.disk_dir / (k.hex() + std::string(kSuffix));
  }

  [[nodiscard]] BlockInfo info(const HostEntry& e) const {
    BlockInfo i;
    i.now_s = now();
    i.last_use_s = e.last_use_s;
    i.tokens = e.kv->n_tokens;
    i.hits = e.hits;
    i.bytes = e.bytes;
    return i;  // depth, tokens_before, priority, demand: 0 (a chunk is computed standalone)
  }

  // ---- host tier ----

  void insert_host(const ChunkKey& key, std::shared_ptr<const ChunkKv> kv, bool on_disk) {
    BlockId id = 0;
    if (!free_ids.empty()) {
      id = free_ids.back();
      free_ids.pop_back();
    } else {
      id = static_cast<BlockId>(id_keys.size());
      id_keys.emplace_back();
    }
    HostEntry e;
    e.bytes = kv->bytes();
    e.kv = std::move(kv);
    e.id = id;
    e.last_use_s = now();
    e.on_disk = on_disk;
    id_keys[static_cast<std::size_t>(id)] = key;
    host_bytes += e.bytes;
    const BlockInfo i = info(e);
    host.emplace(key, std::move(e));
    policy.on_cached(id, i);
    policy.on_evictable(id, i);
  }

  void touch_host(HostEntry& e) {
    e.hits++;
    e.last_use_s = now();
    const BlockInfo i = info(e);
    policy.on_hit(e.id, i);
    policy.on_evictable(e.id, i);
  }

  void erase_host(std::unordered_map<ChunkKey, HostEntry, ChunkKeyHash>::iterator it) {
    const BlockId id = it->second.id;
    policy.on_removed(id);
    id_keys[static_cast<std::size_t>(id)].reset();
    free_ids.push_back(id);
    host_bytes -= it->second.bytes;
    host.erase(it);
  }

  // Evicts (and spills) host entries until `bytes` more fit. Throws Error(kInvalidArgument) when
  // the policy names no entry or one that is not held; every eviction before that is complete.
  void make_host_room(std::size_t bytes) {
    while (host_bytes + bytes > config.host_capacity_bytes && !host.empty()) {
      const std::optional<BlockId> v = policy.pick_victim(now());
      check(v.has_value(), ErrorCode::kInvalidArgument, "chunk store: the eviction policy chose no victim");
      check(*v >= 0 && static_cast<std::size_t>(*v) < id_keys.size() && id_keys[static_cast<std::size_t>(*v)],
            ErrorCode::kInvalidArgument, [&] {
              return "chunk store: the eviction policy chose entry " + std::to_string(*v) +
                     ", which is not held";
            });
      auto it = host.find(*id_keys[static_cast<std::size_t>(*v)]);
      if (disk_enabled() && !it->second.on_disk) write_disk(it->first, *it->second.kv);
      counts.host_evictions++;
      erase_host(it);
    }
  }

  // ---- disk tier ----

  void forget_disk(std::unordered_map<ChunkKey, DiskEntry, ChunkKeyHash>::iterator it) {
    disk_bytes -= it->second.bytes;
    disk_lru.erase(it->second.lru);
    if (auto h = host.find(it->first); h != host.end()) h->second.on_disk = false;
    disk.erase(it);
  }

  void remove_file(const fs::path& p) const {
    std::error_code ec;
    fs::remove(p, ec);
    if (ec) log("chunk store: cannot remove " + p.string() + ": " + ec.message());
  }

  void delete_disk(std::unordered_map<ChunkKey, DiskEntry, ChunkKeyHash>::iterator it) {
    remove_file(path_of(it->first));
    forget_disk(it);
  }

  // A file that failed a check: logged (one line), removed, counted, never used.
  void drop_corrupt(const fs::path& p, const std::string& why) {
    log("chunk store: dropped bad file " + p.string() + ": " + why);
    counts.corrupt_files++;
    std::error_code ec;
    fs::remove(p, ec);
  }

  void add_disk(const ChunkKey& key, std::uint64_t bytes) {
    disk_lru.push_front(key);
    disk.emplace(key, DiskEntry{bytes, disk_lru.begin()});
    disk_bytes += bytes;
  }

  void make_disk_room(std::uint64_t bytes) {
    while (disk_bytes + bytes > config.disk_capacity_bytes && !disk_lru.empty()) {
      counts.disk_evictions++;
      delete_disk(disk.find(disk_lru.back()));
    }
  }

  // Writes kv to the disk tier (temp file, then rename). A failure is logged and leaves no file.
  bool write_disk(const ChunkKey& key, const ChunkKv& kv) {
    const fs::path final_path = path_of(key);
    auto fail = [&](const std::string& why) {
      log("chunk store: not cached on disk: " + final_path.string() + ": " + why);
      counts.disk_write_failures++;
      return false;
    };
    std::vector<std::byte> file;
    try {
      file = detail::encode_chunk_file(key, kv, config.compression_level);
    } catch (const std::exception& e) {
      return fail(e.what());
    }
    if (file.size() > config.disk_capacity_bytes)
      return fail(std::to_string(file.size()) + " bytes exceed the disk tier's capacity of " +
                  std::to_string(config.disk_capacity_bytes));
    if (auto it = disk.find(key); it != disk.end()) delete_disk(it);
    make_disk_room(file.size());

    const fs::path tmp = config.disk_dir / (key.hex() + std::string(kTmpMark) + "-" +
                                            std::to_string(::getpid()) + "-" + std::to_string(tmp_counter++));
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) return fail("cannot create " + tmp.string() + ": " + errno_text(errno));
    int err = 0;
    if (std::fwrite(file.data(), 1, file.size(), f) != file.size()) err = errno;
    if (std::fflush(f) != 0 && err == 0) err = errno;
    if (std::fclose(f) != 0 && err == 0) err = errno;
    std::error_code ec;
    if (err != 0) {
      fs::remove(tmp, ec);
      return fail("write failed: " + errno_text(err));
    }
    fs::rename(tmp, final_path, ec);
    if (ec) {
      std::error_code ignored;
      fs::remove(tmp, ignored);
      return fail("rename failed: " + ec.message());
    }
    add_disk(key, file.size());
    counts.disk_writes++;
    return true;
  }

  // The KV in key's file, checked; nullptr (the file logged and removed) when it fails a check.
  std::shared_ptr<ChunkKv> read_disk(std::unordered_map<ChunkKey, DiskEntry, ChunkKeyHash>::iterator it) {
    const ChunkKey key = it->first;
    const fs::path p = path_of(key);
    const std::uint64_t indexed = it->second.bytes;
    forget_disk(it);  // re-added below when the file is good
    std::error_code ec;
    const std::uint64_t size = fs::file_size(p, ec);
    if (ec) {
      log("chunk store: indexed file vanished: " + p.string() + ": " + ec.message());
      return nullptr;
    }
    if (size != indexed) {
      drop_corrupt(p,
                   "size changed from " + std::to_string(indexed) + " to " + std::to_string(size) + " bytes");
      return nullptr;
    }
    std::string why;
    auto bytes = read_prefix(p, static_cast<std::size_t>(size), why);
    std::optional<ChunkKv> kv;
    if (bytes) {
      if (bytes->size() != size)
        why = "short read";
      else
        kv = detail::decode_chunk_file(*bytes, key, why);
    }
    if (!kv) {
      drop_corrupt(p, why);
      return nullptr;
    }
    add_disk(key, size);
    fs::last_write_time(p, fs::file_time_type::clock::now(), ec);  // LRU order survives a reopen
    return std::make_shared<ChunkKv>(std::move(*kv));
  }

  // Indexes the files already in the directory, oldest first in LRU order by modification time.
  void scan() {
    struct Found {
      ChunkKey key;
      std::uint64_t bytes;
      fs::file_time_type mtime;
    };
    std::vector<Found> found;
    std::error_code ec;
    for (fs::directory_iterator d(config.disk_dir, ec), end; !ec && d != end; d.increment(ec)) {
      const fs::path& p = d->path();
      const std::string name = p.filename().string();
      std::error_code fe;
      if (!d->is_regular_file(fe)) continue;
      if (name.find(kTmpMark) != std::string::npos) {
        log("chunk store: removed leftover temporary file " + p.string());
        remove_file(p);
        continue;
      }
      if (name.size() <= kSuffix.size() || !name.ends_with(kSuffix)) continue;
      const auto key = key_from_stem(std::string_view(name).substr(0, name.size() - kSuffix.size()));
      if (!key) continue;  // not ours
      const std::uint64_t size = d->file_size(fe);
      std::string why;
      std::optional<detail::ChunkFileHeader> h;
      if (fe) {
        why = fe.message();
      } else if (auto head = read_prefix(p, detail::kChunkFileHeaderBytes, why)) {
        h = detail::parse_chunk_header(*head, size, why);
      }
      if (h && h->key != *key) {
        why = "holds key " + h->key.hex();
        h.reset();
      }
      if (!h) {
        drop_corrupt(p, why);
        continue;
      }
      found.push_back({*key, size, d->last_write_time(fe)});
    }
    if (ec)
      throw Error(ErrorCode::kIo,
                  "chunk store: cannot list " + config.disk_dir.string() + ": " + ec.message());
    std::sort(found.begin(), found.end(), [](const Found& a, const Found& b) { return a.mtime < b.mtime; });
    for (const Found& f : found) add_disk(f.key, f.bytes);
    make_disk_room(0);
  }

  void open_disk() {
    const fs::path& dir = config.disk_dir;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec)
      throw Error(ErrorCode::kIo,
                  "chunk store: cannot create directory " + dir.string() + ": " + ec.message());
    if (!fs::is_directory(dir, ec))
      throw Error(ErrorCode::kIo, "chunk store: " + dir.string() + " is not a directory");
    const fs::path probe = dir / (".probe" + std::string(kTmpMark) + "-" + std::to_string(::getpid()));
    std::FILE* f = std::fopen(probe.c_str(), "wb");
    if (!f)
      throw Error(ErrorCode::kIo, "chunk store: cannot write in " + dir.string() + ": " + errno_text(errno));
    const bool ok = std::fputc('x', f) != EOF;
    const bool closed = std::fclose(f) == 0;
    fs::remove(probe, ec);
    if (!ok || !closed) throw Error(ErrorCode::kIo, "chunk store: cannot write in " + dir.string());
    scan();
  }
};

ChunkStore::ChunkStore(Config config)
    : ChunkStore(std::move(config), detail::ErasedEviction(LruEviction{})) {}

ChunkStore::ChunkStore(Config config, detail::ErasedEviction host_eviction) {
  check(config.host_capacity_bytes > 0, ErrorCode::kInvalidArgument,
        "chunk store: the host capacity must hold at least one entry (got 0 bytes)");
  check(config.compression_level >= 0 && config.compression_level <= 9, ErrorCode::kInvalidArgument, [&] {
    return "chunk store: compression level " + std::to_string(config.compression_level) + " not in 0..9";
  });
  if (!config.disk_dir.empty())
    check(config.disk_capacity_bytes >= kMinDiskCapacity, ErrorCode::kInvalidArgument, [&] {
      return "chunk store: a disk capacity of " + std::to_string(config.disk_capacity_bytes) +
             " bytes cannot hold one entry (at least " + std::to_string(kMinDiskCapacity) + ")";
    });
  if (!config.clock) {
    const auto start = std::chrono::steady_clock::now();
    config.clock = [start] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
  }
  if (!config.log) {
    config.log = [](std::string_view line) {
      std::fprintf(stderr, "chunkwise: %.*s\n", static_cast<int>(line.size()), line.data());
    };
  }
  impl_ = std::make_unique<Impl>(std::move(config), std::move(host_eviction));
  if (impl_->disk_enabled()) impl_->open_disk();
}

ChunkStore::~ChunkStore() = default;
ChunkStore::ChunkStore(ChunkStore&&) noexcept = default;
ChunkStore& ChunkStore::operator=(ChunkStore&&) noexcept = default;

ChunkKey ChunkStore::key_for(std::span<const TokenId> tokens) const {
  return chunk_key(tokens, impl_->config.model_id, impl_->config.salt);
}

ChunkKey ChunkStore::put(ChunkKv kv) {
  const ChunkKey key = key_for(kv.tokens);
  put(key, std::move(kv));
  return key;
}

void ChunkStore::put(const ChunkKey& key, ChunkKv kv) {
  Impl& s = *impl_;
  kv.validate();
  check(kv.bytes() <= s.config.host_capacity_bytes, ErrorCode::kInvalidArgument, [&] {
    return "chunk store: an entry of " + std::to_string(kv.bytes()) + " bytes exceeds the host capacity of " +
           std::to_string(s.config.host_capacity_bytes);
  });
  s.counts.puts++;
  if (auto it = s.host.find(key); it != s.host.end()) {
    if (it->second.kv->tokens != kv.tokens) s.counts.collisions++;
    s.erase_host(it);
  }
  if (auto it = s.disk.find(key); it != s.disk.end()) s.delete_disk(it);  // stale now
  s.make_host_room(kv.bytes());
  s.insert_host(key, std::make_shared<const ChunkKv>(std::move(kv)), false);
}

std::shared_ptr<const ChunkKv> ChunkStore::get(const ChunkKey& key, std::span<const TokenId> tokens) {
  Impl& s = *impl_;
  auto same = [&](const ChunkKv& kv) {
    return std::equal(tokens.begin(), tokens.end(), kv.tokens.begin(), kv.tokens.end());
  };
  if (auto it = s.host.find(key); it != s.host.end()) {
    if (!same(*it->second.kv)) {
      s.counts.collisions++;
      s.counts.misses++;
      return nullptr;
    }
    s.touch_host(it->second);
    s.counts.host_hits++;
    return it->second.kv;
  }
  auto d = s.disk.find(key);
  if (d == s.disk.end()) {
    s.counts.misses++;
    return nullptr;
  }
  std::shared_ptr<const ChunkKv> kv = s.read_disk(d);
  if (!kv || !same(*kv)) {
    if (kv) s.counts.collisions++;
    s.counts.misses++;
    return nullptr;
  }
  s.counts.disk_hits++;
  if (kv->bytes() <= s.config.host_capacity_bytes) {  // a store reopened with less RAM may not fit it
    s.make_host_room(kv->bytes());
    s.insert_host(key, kv, s.disk.contains(key));
    s.touch_host(s.host.at(key));
  }
  return kv;
}

void ChunkStore::flush() {
  Impl& s = *impl_;
  if (!s.disk_enabled()) return;
  for (auto& [key, e] : s.host) {
    if (!e.on_disk && s.write_disk(key, *e.kv)) e.on_disk = true;
  }
}

ChunkTier ChunkStore::tier(const ChunkKey& key) const {
  if (impl_->host.contains(key)) return ChunkTier::kHost;
  if (impl_->disk.contains(key)) return ChunkTier::kDisk;
  return ChunkTier::kNone;
}

ChunkStoreStats ChunkStore::stats() const {
  ChunkStoreStats st = impl_->counts;
  st.host_entries = static_cast<std::int64_t>(impl_->host.size());
  st.disk_entries = static_cast<std::int64_t>(impl_->disk.size());
  st.host_bytes = impl_->host_bytes;
  st.disk_bytes = static_cast<std::size_t>(impl_->disk_bytes);
  return st;
}

const ChunkStore::Config& ChunkStore::config() const {
  return impl_->config;
}

std::string ChunkStore::check_invariants() const {
  const Impl& s = *impl_;
  std::size_t bytes = 0;
  for (const auto& [key, e] : s.host) {
    bytes += e.bytes;
    if (e.bytes != e.kv->bytes()) return "host entry " + key.hex() + " accounts the wrong size";
    const auto id = static_cast<std::size_t>(e.id);
    if (id >= s.id_keys.size() || s.id_keys[id] != key) return "host entry " + key.hex() + " has a stale id";
    if (e.on_disk != s.disk.contains(key))
      return "host entry " + key.hex() + " disagrees with the disk index";
  }
  if (bytes != s.host_bytes)
    return "host bytes " + std::to_string(s.host_bytes) + " != recount " + std::to_string(bytes);
  if (bytes > s.config.host_capacity_bytes) return "host tier over capacity";
  if (s.policy.num_candidates() != s.host.size())
    return "eviction policy has " + std::to_string(s.policy.num_candidates()) + " candidates for " +
           std::to_string(s.host.size()) + " entries";
  const auto live = static_cast<std::size_t>(
      std::count_if(s.id_keys.begin(), s.id_keys.end(), [](const auto& k) { return k.has_value(); }));
  if (live != s.host.size() || live + s.free_ids.size() != s.id_keys.size()) return "entry ids leak";
  std::uint64_t dbytes = 0;
  for (const auto& [key, e] : s.disk) {
    dbytes += e.bytes;
    if (*e.lru != key) return "disk LRU list disagrees with the index";
  }
  if (s.disk_lru.size() != s.disk.size()) return "disk LRU list has the wrong length";
  if (dbytes != s.disk_bytes)
    return "disk bytes " + std::to_string(s.disk_bytes) + " != recount " + std::to_string(dbytes);
  if (s.disk_enabled() && dbytes > s.config.disk_capacity_bytes) return "disk tier over capacity";
  return {};
}

}  // namespace chunkwise
