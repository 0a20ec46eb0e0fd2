// EngineConfig::apply: the "key=value" settings string services and the CLI pass to Engine.
#include "catch.hpp"
#include "chunkwise/sched/engine.hpp"
#include "error_code.hpp"

using chunkwise::EngineConfig;
using chunkwise::ErrorCode;

TEST_CASE("engine settings are parsed into the config", "[engine]") {
  EngineConfig c;
  c.apply(
      "batching=prefix-grouped  token_budget=1024 eviction=prefix-lifetime kv_blocks=4096 "
      "prefix_caching=off preemption=swap swap_blocks=64 host_cache_blocks=128 retention_s=2.5 "
      "half_life_s=30 block_size=32 max_sequences=7 max_batch_tokens=99 kv_memory_mb=12");
  CHECK(c.batching == "prefix-grouped");
  CHECK(c.token_budget == 1024);
  CHECK(c.eviction == "prefix-lifetime");
  CHECK(c.session.kv_blocks == 4096);
  CHECK_FALSE(c.session.prefix_caching);
  CHECK(c.session.preemption == chunkwise::Preemption::kSwap);
  CHECK(c.session.swap_blocks == 64);
  CHECK(c.session.host_cache_blocks == 128);
  CHECK(c.retention_s == 2.5);
  CHECK(c.half_life_s == 30);
  CHECK(c.session.block_size == 32);
  CHECK(c.session.max_sequences == 7);
  CHECK(c.session.max_batch_tokens == 99);
  CHECK(c.session.kv_memory_mb == 12);
  c.apply("");  // nothing to change
  CHECK(c.batching == "prefix-grouped");
}

TEST_CASE("bad engine settings are refused with a typed error", "[engine]") {
  EngineConfig c;
  const char* bad[] = {"batching",         "=stall-free",           "colour=blue",        "token_budget=-5",
                       "token_budget=12x", "kv_blocks=1e99",        "prefix_caching=yes", "preemption=pause",
                       "retention_s=soon", "swap_blocks=2147483648"};
  for (const char* s : bad) {
    INFO(s);
    CHECK(chunkwise::test::error_code([&] { c.apply(s); }) == ErrorCode::kInvalidArgument);
  }
  CHECK(c.batching == "stall-free");  // defaults untouched by the refused settings
  CHECK(EngineConfig{}.token_budget == 0);
}

TEST_CASE("the engine lists its stock policies", "[engine]") {
  CHECK(chunkwise::Engine::batching_policies().size() == 4);
  CHECK(chunkwise::Engine::eviction_policies().size() == 4);
}
