// ChunkStore: keys, the host tier and its eviction policy, the disk tier and its file checks, in a
// temporary directory per test. KV data are random bit patterns (NaNs and denormals included), so
// "bit-exact" means every byte survived the round trip through deflate and back.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "catch.hpp"
#include "chunkwise/core/error.hpp"
#include "chunkwise/kv/chunk_store.hpp"
#include "chunkwise/kv/detail/chunk_file.hpp"
#include "chunkwise/policy/concepts.hpp"
#include "chunkwise/policy/eviction/cost_aware_eviction.hpp"
#include "chunkwise/policy/eviction/priority_eviction.hpp"
#include "chunkwise/policy/reuse/prefix_only_reuse.hpp"
#include "error_code.hpp"
#include "temp_dir.hpp"

using namespace chunkwise;
namespace fs = std::filesystem;
using test::error_code;
using test::TempDir;

namespace {

constexpr int kLayers = 2;
constexpr int kDim = 8;
// ChunkKv::bytes() of a 16-token entry of kLayers x kDim: 16 ids + 2 * 2 * 16 * 8 floats.
constexpr std::size_t kEntry = (16 + 2 * kLayers * 16 * kDim) * 4;

std::vector<TokenId> seq(int n, TokenId first) {
  std::vector<TokenId> t(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = first + i;
  return t;
}

// Random bit patterns in every float: any byte lost or reordered shows up.
ChunkKv make_kv(const std::vector<TokenId>& tokens, std::uint32_t seed, int stats_per_token = 0,
                int position0 = 0) {
  ChunkKv kv = ChunkKv::zeros(tokens, kLayers, kDim, position0);
  std::mt19937 rng(seed);
  for (float& x : kv.data) {
    const std::uint32_t bits = rng();
    std::memcpy(&x, &bits, sizeof x);
  }
  kv.token_stats.resize(tokens.size() * static_cast<std::size_t>(stats_per_token));
  for (float& x : kv.token_stats) x = static_cast<float>(rng() % 1000) / 7.0F;
  return kv;
}

bool bit_equal(const ChunkKv& a, const ChunkKv& b) {
  return a.n_tokens == b.n_tokens && a.n_layers == b.n_layers && a.kv_dim == b.kv_dim &&
         a.position0 == b.position0 && a.tokens == b.tokens && a.data.size() == b.data.size() &&
         a.token_stats.size() == b.token_stats.size() &&
         std::memcmp(a.data.data(), b.data.data(), a.data.size() * sizeof(float)) == 0 &&
         (a.token_stats.empty() ||
          std::memcmp(a.token_stats.data(), b.token_stats.data(), a.token_stats.size() * sizeof(float)) == 0);
}

struct Harness {
  double t = 0;
  std::vector<std::string> logs;

  ChunkStore::Config config(std::size_t host_bytes, const fs::path& dir = {},
                            std::size_t disk_bytes = std::size_t{1} << 20) {
    ChunkStore::Config c;
    c.model_id = "test-model@1";
    c.salt = "tenant-a";
    c.host_capacity_bytes = host_bytes;
    c.disk_dir = dir;
    c.disk_capacity_bytes = disk_bytes;
    c.clock = [this] { return t; };
    c.log = [this](std::string_view line) { logs.emplace_back(line); };
    return c;
  }
};

fs::path file_of(const fs::path& dir, const ChunkKey& k) {
  return dir / (k.hex() + ".ckv");
}

std::vector<unsigned char> read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const fs::path& p, const std::vector<unsigned char>& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

int count_files(const fs::path& dir) {
  return static_cast<int>(std::distance(fs::directory_iterator(dir), fs::directory_iterator()));
}

// CRC-32 (the zlib polynomial), to re-sign a header the test edits on purpose.
std::uint32_t crc32(const unsigned char* p, std::size_t n) {
  std::uint32_t c = 0xFFFFFFFFU;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320U & (0U - (c & 1U)));
  }
  return ~c;
}

void resign_header(std::vector<unsigned char>& f) {
  const std::uint32_t c = crc32(f.data(), 76);
  std::memcpy(f.data() + 76, &c, 4);
}

bool contains_text(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

// Evicts the largest entry first: a custom policy that reads BlockInfo::bytes.
class LargestFirst {
 public:
  void on_cached(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_hit(BlockId /*b*/, const BlockInfo& /*info*/) {}
  void on_evictable(BlockId b, const BlockInfo& info) { bytes_[b] = info.bytes; }
  void on_pinned(BlockId b) { bytes_.erase(b); }
  void on_removed(BlockId b) { bytes_.erase(b); }
  std::optional<BlockId> pick_victim(double /*now_s*/) {
    if (bytes_.empty()) return std::nullopt;
    return std::max_element(bytes_.begin(), bytes_.end(),
                            [](const auto& a, const auto& b) { return a.second < b.second; })
        ->first;
  }
  [[nodiscard]] std::size_t num_candidates() const { return bytes_.size(); }

 private:
  std::map<BlockId, std::size_t> bytes_;
};

// Names an entry that does not exist.
struct BrokenPolicy : LargestFirst {
  std::optional<BlockId> pick_victim(double /*now_s*/) { return 12345; }
};

static_assert(EvictionPolicy<LargestFirst>);
static_assert(EvictionPolicy<BrokenPolicy>);
static_assert(ReusePolicy<PrefixOnlyReuse>);  // reuse policies plan against a complete ChunkStore

}  // namespace

TEST_CASE("chunk keys are stable digests of tokens, model and salt", "[chunk_store]") {
  const auto t = seq(16, 100);
  const ChunkKey k = chunk_key(t, "m", "s");
  CHECK(k == chunk_key(t, "m", "s"));
  auto t2 = t;
  t2[7]++;
  CHECK(k != chunk_key(t2, "m", "s"));
  CHECK(k != chunk_key(t, "m2", "s"));
  CHECK(k != chunk_key(t, "m", "s2"));
  CHECK(k != chunk_key(std::span(t).first(15), "m", "s"));
  CHECK(chunk_key(t, "ab", "c") != chunk_key(t, "a", "bc"));  // length-prefixed fields
  CHECK(chunk_key({}, "m", "s") != chunk_key({}, "m", ""));
  CHECK(k.hi != k.lo);
  CHECK(k.hex().size() == 32);
  CHECK(ChunkKey{0x0123456789abcdefULL, 0xfedcba9876543210ULL}.hex() == "0123456789abcdeffedcba9876543210");
  // Files written by one build are found by the next only while this value stays the same.
  CHECK(chunk_key(seq(4, 1), "smollm2-135m", "").hex() == "38730ecade38eb30cd03f27d646777f0");
}

TEST_CASE("ChunkKv checks its shape", "[chunk_store]") {
  const auto t = seq(4, 1);
  ChunkKv kv = ChunkKv::zeros(t, 3, 5, 7);
  CHECK(kv.n_tokens == 4);
  CHECK(kv.position0 == 7);
  CHECK(kv.data.size() == 2U * 3 * 4 * 5);
  CHECK(kv.k(1).data() == kv.data.data() + 2 * 20);
  CHECK(kv.v(1).data() == kv.data.data() + 3 * 20);
  CHECK(kv.v(2).size() == 20);
  CHECK(kv.bytes() == (4 + 120) * 4U);
  CHECK_NOTHROW(kv.validate());
  CHECK(error_code([&] { (void)kv.k(3); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([&] { (void)ChunkKv::zeros({}, 1, 1); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([&] { (void)ChunkKv::zeros(t, 0, 1); }) == ErrorCode::kInvalidArgument);

  auto broken = [&](auto edit) {
    ChunkKv b = kv;
    edit(b);
    return error_code([&] { b.validate(); });
  };
  CHECK(broken([](ChunkKv& b) { b.n_tokens = 0; }) == ErrorCode::kInvalidArgument);
  CHECK(broken([](ChunkKv& b) { b.tokens.pop_back(); }) == ErrorCode::kInvalidArgument);
  CHECK(broken([](ChunkKv& b) { b.data.pop_back(); }) == ErrorCode::kInvalidArgument);
  CHECK(broken([](ChunkKv& b) { b.kv_dim = 6; }) == ErrorCode::kInvalidArgument);
  CHECK(broken([](ChunkKv& b) { b.position0 = -1; }) == ErrorCode::kInvalidArgument);
  CHECK(broken([](ChunkKv& b) { b.token_stats.resize(6); }) == ErrorCode::kInvalidArgument);
  CHECK(broken([](ChunkKv& b) { b.token_stats.resize(8); }) == std::nullopt);
  CHECK(broken([](ChunkKv& b) {
          b.n_layers = 1 << 30;
          b.n_tokens = 1 << 30;
        }) == ErrorCode::kInvalidArgument);
}

TEST_CASE("host round trip", "[chunk_store]") {
  Harness h;
  ChunkStore store(h.config(4 * kEntry));
  const auto t = seq(16, 10);
  const ChunkKv original = make_kv(t, 1, 3, 5);
  const ChunkKey key = store.put(original);
  CHECK(key == store.key_for(t));
  CHECK(key == chunk_key(t, "test-model@1", "tenant-a"));
  CHECK(store.tier(key) == ChunkTier::kHost);
  CHECK(store.contains(key));

  const auto got = store.get(key, t);
  REQUIRE(got);
  CHECK(bit_equal(*got, original));
  CHECK(got->stats_per_token() == 3);
  CHECK(store.get(key, seq(16, 11)) == nullptr);   // other tokens under the key
  CHECK(store.get(ChunkKey{1, 2}, t) == nullptr);  // unknown key
  CHECK_FALSE(store.contains(ChunkKey{1, 2}));

  const ChunkStoreStats s = store.stats();
  CHECK(s.puts == 1);
  CHECK(s.host_hits == 1);
  CHECK(s.misses == 2);
  CHECK(s.collisions == 1);
  CHECK(s.host_entries == 1);
  CHECK(s.host_bytes == original.bytes());

  // Bad entries are typed errors and change nothing.
  ChunkKv bad = make_kv(t, 2);
  bad.data.pop_back();
  CHECK(error_code([&] { store.put(bad); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([&] { store.put(make_kv(seq(80, 0), 3)); }) == ErrorCode::kInvalidArgument);  // > capacity
  CHECK(store.stats().puts == 1);
  CHECK(store.check_invariants().empty());

  // A pointer handed out stays valid after its entry is evicted.
  for (int i = 0; i < 6; ++i)
    store.put(make_kv(seq(16, 1000 * (i + 1)), 10U + static_cast<std::uint32_t>(i)));
  CHECK(store.tier(key) == ChunkTier::kNone);
  CHECK(bit_equal(*got, original));
  CHECK(store.stats().host_evictions == 3);
  CHECK(store.check_invariants().empty());
  CHECK(h.logs.empty());
  CHECK(PrefixOnlyReuse{}.plan(PromptLayout{t, {0}}, store).load.empty());
}

TEST_CASE("entries spill to disk and come back bit-exact", "[chunk_store]") {
  TempDir dir;
  Harness h;
  ChunkStore store(h.config(2 * kEntry + kEntry / 2, dir.path()));
  const auto ta = seq(16, 0), tb = seq(16, 100), tc = seq(16, 200);
  const ChunkKv a = make_kv(ta, 1, 2, 9), b = make_kv(tb, 2), c = make_kv(tc, 3);
  h.t = 1;
  const ChunkKey ka = store.put(a);
  h.t = 2;
  const ChunkKey kb = store.put(b);
  h.t = 3;
  const ChunkKey kc = store.put(c);  // host holds two: a goes to disk
  CHECK(store.tier(ka) == ChunkTier::kDisk);
  CHECK(fs::exists(file_of(dir.path(), ka)));
  CHECK(store.stats().host_evictions == 1);
  CHECK(store.stats().disk_writes == 1);

  h.t = 4;
  const auto got = store.get(ka, ta);
  REQUIRE(got);
  CHECK(bit_equal(*got, a));
  CHECK(store.tier(ka) == ChunkTier::kHost);  // promoted; b made room and went to disk
  CHECK(store.tier(kb) == ChunkTier::kDisk);
  CHECK(store.tier(kc) == ChunkTier::kHost);
  ChunkStoreStats s = store.stats();
  CHECK(s.disk_hits == 1);
  CHECK(s.disk_writes == 2);
  CHECK(s.disk_entries == 2);  // a's file stays: evicting a again costs no write
  CHECK(s.host_bytes == a.bytes() + c.bytes());
  CHECK(store.check_invariants().empty());

  h.t = 5;
  REQUIRE(store.get(kc, tc));
  h.t = 6;
  REQUIRE(store.get(kb, tb));  // a is the least recent: dropped without a write
  CHECK(store.tier(ka) == ChunkTier::kDisk);
  CHECK(store.stats().disk_writes == 2);
  const auto again = store.get(ka, ta);
  REQUIRE(again);
  CHECK(bit_equal(*again, a));
  CHECK(store.check_invariants().empty());
  CHECK(h.logs.empty());
}

TEST_CASE("the host tier evicts the least recently used entry (injected clock)", "[chunk_store]") {
  Harness h;
  ChunkStore store(h.config(3 * kEntry));
  std::vector<ChunkKey> k;
  for (int i = 0; i < 3; ++i) {
    h.t = 1 + i;
    k.push_back(store.put(make_kv(seq(16, 100 * i), static_cast<std::uint32_t>(i))));
  }
  h.t = 4;
  REQUIRE(store.get(k[0], seq(16, 0)));
  h.t = 5;
  k.push_back(store.put(make_kv(seq(16, 300), 3)));  // evicts k[1], the least recently used
  CHECK(store.tier(k[1]) == ChunkTier::kNone);
  CHECK(store.tier(k[0]) == ChunkTier::kHost);
  CHECK(store.tier(k[2]) == ChunkTier::kHost);
  h.t = 6;
  REQUIRE(store.get(k[2], seq(16, 200)));
  h.t = 7;
  store.put(make_kv(seq(16, 400), 4));  // now k[0] (used at 4) is the oldest
  CHECK(store.tier(k[0]) == ChunkTier::kNone);
  CHECK(store.tier(k[2]) == ChunkTier::kHost);
  CHECK(store.tier(k[3]) == ChunkTier::kHost);
  CHECK(store.stats().host_evictions == 2);
  CHECK(store.check_invariants().empty());
}

TEST_CASE("the host tier takes any eviction policy", "[chunk_store]") {
  Harness h;
  SECTION("a custom policy sees each entry's bytes") {
    ChunkStore store(h.config(3 * kEntry), LargestFirst{});
    const ChunkKey big = store.put(make_kv(seq(32, 0), 1));  // two entries' worth
    const ChunkKey small = store.put(make_kv(seq(16, 100), 2));
    h.t = 1;
    REQUIRE(store.get(big, seq(32, 0)));  // recently used, but the largest
    store.put(make_kv(seq(16, 200), 3));
    CHECK(store.tier(big) == ChunkTier::kNone);
    CHECK(store.tier(small) == ChunkTier::kHost);
    CHECK(store.check_invariants().empty());
  }
  SECTION("stock policies") {
    ChunkStore cost(h.config(2 * kEntry), CostAwareEviction{});
    ChunkStore prio(h.config(2 * kEntry), PriorityEviction{});
    for (ChunkStore* s : {&cost, &prio}) {
      for (int i = 0; i < 5; ++i) s->put(make_kv(seq(16, 100 * i), static_cast<std::uint32_t>(i)));
      CHECK(s->stats().host_entries == 2);
      CHECK(s->check_invariants().empty());
    }
  }
  SECTION("a policy that names an entry not held is a typed error; the store stays whole") {
    ChunkStore store(h.config(2 * kEntry), BrokenPolicy{});
    const ChunkKey a = store.put(make_kv(seq(16, 0), 1));
    store.put(make_kv(seq(16, 100), 2));
    CHECK(error_code([&] { store.put(make_kv(seq(16, 200), 3)); }) == ErrorCode::kInvalidArgument);
    CHECK(store.stats().host_entries == 2);
    CHECK(store.get(a, seq(16, 0)) != nullptr);
    CHECK(store.check_invariants().empty());
  }
}

TEST_CASE("capacity limits hold under random traffic", "[chunk_store]") {
  TempDir dir;
  Harness h;
  const std::size_t host_cap = 5 * kEntry, disk_cap = 8 * (kEntry + 200);
  ChunkStore store(h.config(host_cap, dir.path(), disk_cap));
  std::mt19937 rng(20260521);
  std::vector<std::vector<TokenId>> chunks;
  for (int i = 0; i < 30; ++i) chunks.push_back(seq(4 + static_cast<int>(rng() % 37), 1000 * i));
  std::map<ChunkKey, ChunkKv> latest;  // what the last put of each key stored
  std::uint32_t version = 0;
  for (int op = 0; op < 3000; ++op) {
    h.t += 0.25;
    const auto& t = chunks[rng() % chunks.size()];
    const ChunkKey key = store.key_for(t);
    if (rng() % 3 == 0) {
      ChunkKv kv = make_kv(t, ++version, static_cast<int>(rng() % 2));
      latest.insert_or_assign(key, kv);
      store.put(std::move(kv));
    } else if (rng() % 20 == 0) {
      store.flush();
    } else if (const auto got = store.get(key, t)) {
      REQUIRE(latest.contains(key));
      REQUIRE(bit_equal(*got, latest.at(key)));
    }
    const ChunkStoreStats s = store.stats();
    REQUIRE(s.host_bytes <= host_cap);
    REQUIRE(s.disk_bytes <= disk_cap);
    REQUIRE(store.check_invariants().empty());
    if (op % 100 == 0) REQUIRE(count_files(dir.path()) == s.disk_entries);
  }
  const ChunkStoreStats s = store.stats();
  CHECK(s.host_hits > 0);
  CHECK(s.disk_hits > 0);
  CHECK(s.disk_evictions > 0);
  CHECK(s.corrupt_files == 0);
  CHECK(h.logs.empty());
}

TEST_CASE("a reopened store finds the files already there", "[chunk_store]") {
  TempDir dir;
  Harness h;
  std::vector<ChunkKv> kvs;
  std::vector<ChunkKey> keys;
  {
    ChunkStore store(h.config(2 * kEntry, dir.path()));
    for (int i = 0; i < 4; ++i) {
      kvs.push_back(make_kv(seq(16, 100 * i), static_cast<std::uint32_t>(i), i % 2));
      keys.push_back(store.put(kvs.back()));
    }
    store.flush();  // the two still only in RAM
    CHECK(store.stats().disk_entries == 4);
  }
  ChunkStore reopened(h.config(2 * kEntry, dir.path()));
  CHECK(reopened.stats().disk_entries == 4);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    CHECK(reopened.tier(keys[i]) == ChunkTier::kDisk);
    const auto got = reopened.get(keys[i], kvs[i].tokens);
    REQUIRE(got);
    CHECK(bit_equal(*got, kvs[i]));
  }
  CHECK(reopened.check_invariants().empty());
  CHECK(h.logs.empty());

  // Reopened with less disk: the least recently used files go until the rest fit.
  const std::size_t one_file = static_cast<std::size_t>(fs::file_size(file_of(dir.path(), keys[0])));
  ChunkStore smaller(h.config(2 * kEntry, dir.path(), 2 * one_file + 200));  // any two, not three
  CHECK(smaller.stats().disk_entries == 2);
  CHECK(smaller.stats().disk_evictions == 2);
  CHECK(count_files(dir.path()) == 2);
  CHECK(smaller.check_invariants().empty());
}

TEST_CASE("a corrupted payload byte is a miss, logged once, and the file is removed", "[chunk_store]") {
  TempDir dir;
  Harness h;
  ChunkStore store(h.config(kEntry, dir.path()));
  const auto ta = seq(16, 0);
  const ChunkKey ka = store.put(make_kv(ta, 1));
  store.put(make_kv(seq(16, 100), 2));  // a spills
  const fs::path p = file_of(dir.path(), ka);
  REQUIRE(fs::exists(p));
  auto bytes = read_all(p);
  bytes[bytes.size() - 10] ^= 0x20;
  write_all(p, bytes);

  CHECK(store.get(ka, ta) == nullptr);
  REQUIRE(h.logs.size() == 1);
  CHECK(contains_text(h.logs[0], ka.hex()));
  CHECK(contains_text(h.logs[0], "checksum"));
  CHECK_FALSE(fs::exists(p));
  CHECK(store.tier(ka) == ChunkTier::kNone);
  const ChunkStoreStats s = store.stats();
  CHECK(s.corrupt_files == 1);
  CHECK(s.misses == 1);
  CHECK(s.disk_hits == 0);
  CHECK(store.check_invariants().empty());
  CHECK(store.get(ka, ta) == nullptr);  // a plain miss now, nothing more logged
  CHECK(h.logs.size() == 1);
}

TEST_CASE("a corrupted header is found when the store opens", "[chunk_store]") {
  TempDir dir;
  Harness h;
  ChunkKey ka;
  {
    ChunkStore store(h.config(kEntry, dir.path()));
    ka = store.put(make_kv(seq(16, 0), 1));
    store.flush();
  }
  const fs::path p = file_of(dir.path(), ka);
  auto bytes = read_all(p);
  bytes[33] ^= 0x01;  // n_tokens
  write_all(p, bytes);
  ChunkStore store(h.config(kEntry, dir.path()));
  REQUIRE(h.logs.size() == 1);
  CHECK(contains_text(h.logs[0], "header checksum"));
  CHECK_FALSE(fs::exists(p));
  CHECK(store.stats().corrupt_files == 1);
  CHECK(store.get(ka, seq(16, 0)) == nullptr);
}

TEST_CASE("a truncated file is a miss", "[chunk_store]") {
  TempDir dir;
  Harness h;
  const auto ta = seq(16, 0);
  SECTION("after the store opened") {
    ChunkStore store(h.config(kEntry, dir.path()));
    const ChunkKey ka = store.put(make_kv(ta, 1));
    store.put(make_kv(seq(16, 100), 2));
    const fs::path p = file_of(dir.path(), ka);
    fs::resize_file(p, fs::file_size(p) - 7);
    CHECK(store.get(ka, ta) == nullptr);
    CHECK(h.logs.size() == 1);
    CHECK_FALSE(fs::exists(p));
    CHECK(store.stats().corrupt_files == 1);
    CHECK(store.check_invariants().empty());
  }
  SECTION("before it opened") {
    ChunkKey ka;
    {
      ChunkStore store(h.config(kEntry, dir.path()));
      ka = store.put(make_kv(ta, 1));
      store.flush();
    }
    const fs::path p = file_of(dir.path(), ka);
    const std::size_t sizes[] = {static_cast<std::size_t>(fs::file_size(p)) - 1, 20, 0};
    const auto whole = read_all(p);
    for (std::size_t size : sizes) {
      h.logs.clear();
      write_all(p,
                std::vector<unsigned char>(whole.begin(), whole.begin() + static_cast<std::ptrdiff_t>(size)));
      ChunkStore store(h.config(kEntry, dir.path()));
      CHECK(h.logs.size() == 1);
      CHECK_FALSE(fs::exists(p));
      CHECK(store.get(ka, ta) == nullptr);
    }
  }
}

TEST_CASE("a file of another magic, version or key is a miss", "[chunk_store]") {
  TempDir dir;
  Harness h;
  const auto ta = seq(16, 0), tb = seq(16, 500);
  ChunkKey ka, kb;
  {
    ChunkStore store(h.config(4 * kEntry, dir.path()));
    ka = store.put(make_kv(ta, 1));
    kb = store.put(make_kv(tb, 2));
    store.flush();
  }
  const fs::path pa = file_of(dir.path(), ka), pb = file_of(dir.path(), kb);
  const auto good = read_all(pa);

  struct Case {
    const char* name;
    void (*edit)(std::vector<unsigned char>&);
    const char* reason;
  };
  const Case cases[] = {
      {"magic", [](std::vector<unsigned char>& f) { f[0] = 'X'; }, "magic"},
      {"version",
       [](std::vector<unsigned char>& f) {
         f[8] = 2;
         resign_header(f);
       },
       "version 2"},
      {"key in the header",
       [](std::vector<unsigned char>& f) {
         f[20] ^= 0xFF;
         resign_header(f);
       },
       "holds key"},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    h.logs.clear();
    auto f = good;
    c.edit(f);
    write_all(pa, f);
    ChunkStore store(h.config(4 * kEntry, dir.path()));
    REQUIRE(h.logs.size() == 1);
    CHECK(contains_text(h.logs[0], c.reason));
    CHECK_FALSE(fs::exists(pa));
    CHECK(store.get(ka, ta) == nullptr);
    CHECK(store.get(kb, tb) != nullptr);  // the good file next to it is untouched
  }

  // A valid file of key a under key b's name.
  h.logs.clear();
  write_all(pb, good);
  ChunkStore store(h.config(4 * kEntry, dir.path()));
  REQUIRE(h.logs.size() == 1);
  CHECK(contains_text(h.logs[0], "holds key"));
  CHECK(store.get(kb, tb) == nullptr);
  CHECK(store.stats().corrupt_files == 1);

  // The same check in the decoder, for a file read after the store opened.
  std::vector<std::byte> bytes(good.size());
  std::memcpy(bytes.data(), good.data(), good.size());
  std::string why;
  CHECK(detail::decode_chunk_file(bytes, kb, why) == std::nullopt);
  CHECK(contains_text(why, "holds key"));
  CHECK(detail::decode_chunk_file(bytes, ka, why).has_value());
}

TEST_CASE("a key collision never returns another chunk's KV", "[chunk_store]") {
  TempDir dir;
  Harness h;
  ChunkStore store(h.config(2 * kEntry, dir.path()));
  const auto ta = seq(16, 0), tb = seq(16, 7);
  const ChunkKv a = make_kv(ta, 1), b = make_kv(tb, 2);
  const ChunkKey key = chunk_key(ta, "m", "");  // both stored under one key, as a collision would
  store.put(key, a);
  CHECK(store.get(key, tb) == nullptr);
  CHECK(store.get(key, std::span(ta).first(8)) == nullptr);
  REQUIRE(store.get(key, ta));
  store.put(key, b);  // replaces a
  CHECK(store.get(key, ta) == nullptr);
  REQUIRE(store.get(key, tb));
  CHECK(bit_equal(*store.get(key, tb), b));

  // The same on disk: the file is kept (it is valid), the lookup misses.
  store.put(make_kv(seq(16, 100), 3));
  store.put(make_kv(seq(16, 200), 4));
  REQUIRE(store.tier(key) == ChunkTier::kDisk);
  CHECK(store.get(key, ta) == nullptr);
  CHECK(store.tier(key) == ChunkTier::kDisk);
  const auto got = store.get(key, tb);
  REQUIRE(got);
  CHECK(bit_equal(*got, b));
  const ChunkStoreStats s = store.stats();
  CHECK(s.collisions == 5);
  CHECK(s.corrupt_files == 0);
  CHECK(h.logs.empty());
  CHECK(store.check_invariants().empty());
}

TEST_CASE("bad configurations are typed errors", "[chunk_store]") {
  TempDir dir;
  Harness h;
  CHECK(error_code([&] { ChunkStore s(h.config(0)); }) == ErrorCode::kInvalidArgument);
  CHECK(error_code([&] { ChunkStore s(h.config(kEntry, dir.path(), 10)); }) == ErrorCode::kInvalidArgument);
  auto level = [&](int l) {
    auto c = h.config(kEntry);
    c.compression_level = l;
    return error_code([&] { ChunkStore s(c); });
  };
  CHECK(level(-1) == ErrorCode::kInvalidArgument);
  CHECK(level(10) == ErrorCode::kInvalidArgument);
  CHECK(level(9) == std::nullopt);
  CHECK(error_code([&] { ChunkStore s(h.config(kEntry, {}, 0)); }) == std::nullopt);  // no disk tier

  // Paths that cannot be a writable directory (root can write anywhere, so no chmod here).
  const fs::path file = dir.path() / "plain-file";
  write_all(file, {1, 2, 3});
  CHECK(error_code([&] { ChunkStore s(h.config(kEntry, file)); }) == ErrorCode::kIo);
  CHECK(error_code([&] { ChunkStore s(h.config(kEntry, file / "sub")); }) == ErrorCode::kIo);
  CHECK(error_code([&] { ChunkStore s(h.config(kEntry, "/proc/chunkwise-chunk-store")); }) == ErrorCode::kIo);
  // A missing directory is created.
  CHECK(error_code([&] { ChunkStore s(h.config(kEntry, dir.path() / "a" / "b")); }) == std::nullopt);
  CHECK(fs::is_directory(dir.path() / "a" / "b"));
  CHECK(h.logs.empty());
}

TEST_CASE("a failed disk write is logged and the store stays consistent", "[chunk_store]") {
  TempDir dir;
  Harness h;
  SECTION("the directory is gone") {
    const fs::path sub = dir.path() / "tier";
    ChunkStore store(h.config(kEntry, sub));
    fs::remove_all(sub);
    write_all(sub, {0});  // a file where the directory was: every create fails
    const auto ta = seq(16, 0);
    const ChunkKey ka = store.put(make_kv(ta, 1));
    const ChunkKey kb = store.put(make_kv(seq(16, 100), 2));  // a cannot spill
    REQUIRE(h.logs.size() == 1);
    CHECK(contains_text(h.logs[0], "not cached on disk"));
    CHECK(store.tier(ka) == ChunkTier::kNone);
    CHECK(store.get(ka, ta) == nullptr);
    CHECK(store.get(kb, seq(16, 100)) != nullptr);
    CHECK(store.stats().disk_write_failures == 1);
    CHECK(store.stats().disk_entries == 0);
    store.flush();  // b cannot be written either
    CHECK(h.logs.size() == 2);
    CHECK(store.check_invariants().empty());
  }
  SECTION("an entry larger than the whole disk tier") {
    ChunkStore store(h.config(kEntry, dir.path(), kEntry / 2));
    store.put(make_kv(seq(16, 0), 1));
    store.put(make_kv(seq(16, 100), 2));
    REQUIRE(h.logs.size() == 1);
    CHECK(contains_text(h.logs[0], "capacity"));
    CHECK(store.stats().disk_write_failures == 1);
    CHECK(count_files(dir.path()) == 0);
    CHECK(store.check_invariants().empty());
  }
  SECTION("the disk tier drops its least recently used file") {
    ChunkStore store(h.config(kEntry, dir.path(), 2 * kEntry + 2 * 200));
    std::vector<ChunkKey> keys;
    for (int i = 0; i < 4; ++i)
      keys.push_back(store.put(make_kv(seq(16, 100 * i), static_cast<std::uint32_t>(i))));
    // 0, 1 and 2 spilled in that order; the disk holds two.
    CHECK(store.tier(keys[0]) == ChunkTier::kNone);
    CHECK(store.tier(keys[1]) == ChunkTier::kDisk);
    CHECK(store.tier(keys[2]) == ChunkTier::kDisk);
    CHECK(store.stats().disk_evictions == 1);
    CHECK(count_files(dir.path()) == 2);
    CHECK(h.logs.empty());
  }
}

TEST_CASE("leftover temporary files are removed, foreign files kept", "[chunk_store]") {
  TempDir dir;
  Harness h;
  write_all(dir.path() / "0123456789abcdef0123456789abcdef.ckv.tmp-1-2", {1, 2});
  write_all(dir.path() / "notes.txt", {1});
  write_all(dir.path() / "readme.ckv", {1});
  ChunkStore store(h.config(kEntry, dir.path()));
  CHECK(h.logs.size() == 1);
  CHECK(count_files(dir.path()) == 2);
  CHECK(fs::exists(dir.path() / "notes.txt"));
  CHECK(fs::exists(dir.path() / "readme.ckv"));
  CHECK(store.stats().disk_entries == 0);
}

TEST_CASE("chunk files are compressed", "[chunk_store]") {
  const auto t = seq(64, 0);
  ChunkKv kv = ChunkKv::zeros(t, kLayers, kDim);
  for (std::size_t i = 0; i < kv.data.size(); ++i) kv.data[i] = static_cast<float>(i % 13) * 0.5F;
  const auto file = detail::encode_chunk_file(chunk_key(t, "m"), kv, 1);
  CHECK(file.size() < kv.bytes() / 4);
  std::string why;
  const auto back = detail::decode_chunk_file(file, chunk_key(t, "m"), why);
  REQUIRE(back);
  CHECK(bit_equal(*back, kv));
}
