#include <random>

#include "catch.hpp"
#include "chunkwise/kv/block_pool.hpp"

using chunkwise::BlockId;
using chunkwise::BlockPool;

TEST_CASE("block pool hands out every block once and takes them back", "[kv]") {
  BlockPool pool(4);
  std::vector<BlockId> got;
  while (auto b = pool.allocate()) got.push_back(*b);
  CHECK(got.size() == 4);
  CHECK(pool.free_count() == 0);
  CHECK_FALSE(pool.allocate().has_value());
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<BlockId>{0, 1, 2, 3});
  pool.retain(2);
  pool.release(2);
  CHECK(pool.refcount(2) == 1);
  pool.release(2);
  CHECK(pool.refcount(2) == 0);
  CHECK(pool.free_count() == 1);
  CHECK(pool.invariants_hold());
}

TEST_CASE("block pool rejects misuse with typed errors", "[kv]") {
  BlockPool pool(2);
  CHECK_THROWS_AS(pool.release(0), chunkwise::Error);  // free block
  CHECK_THROWS_AS(pool.retain(1), chunkwise::Error);
  CHECK_THROWS_AS(pool.release(7), chunkwise::Error);  // out of range
  CHECK_THROWS_AS(pool.refcount(-1), chunkwise::Error);
  CHECK_THROWS_AS(BlockPool(0), chunkwise::Error);
  CHECK(pool.invariants_hold());
}

TEST_CASE("block pool accounting survives random traffic", "[kv]") {
  BlockPool pool(32);
  std::mt19937 rng(7);
  std::vector<int> refs(32, 0);  // model of the pool
  for (int i = 0; i < 20000; ++i) {
    const int op = static_cast<int>(rng() % 3);
    if (op == 0) {
      auto b = pool.allocate();
      const bool any_free = std::count(refs.begin(), refs.end(), 0) > 0;
      REQUIRE(b.has_value() == any_free);
      if (b) {
        REQUIRE(refs[static_cast<std::size_t>(*b)] == 0);
        refs[static_cast<std::size_t>(*b)] = 1;
      }
    } else {
      const auto b = static_cast<BlockId>(rng() % 32);
      if (refs[static_cast<std::size_t>(b)] == 0) continue;
      if (op == 1) {
        pool.retain(b);
        ++refs[static_cast<std::size_t>(b)];
      } else {
        pool.release(b);
        --refs[static_cast<std::size_t>(b)];
      }
    }
    REQUIRE(pool.free_count() == std::count(refs.begin(), refs.end(), 0));
  }
  CHECK(pool.invariants_hold());
}
