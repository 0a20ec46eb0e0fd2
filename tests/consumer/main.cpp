// Links against the installed chunkwise package and exercises a few public entry points that
// need no model: workload parsing, the KV block pool, a policy, typed errors.
#include <chunkwise/kv/block_pool.hpp>
#include <chunkwise/policy/batching/stall_free_batching.hpp>
#include <chunkwise/sched/inference_session.hpp>
#include <chunkwise/sched/workload.hpp>
#include <cstdio>

int main() {
  const auto items = chunkwise::parse_workload(R"({"id": "a", "prompt": "hi", "max_tokens": 4})");
  chunkwise::BlockPool pool(8);
  const auto b = pool.allocate();
  const chunkwise::SequenceView seq{1, 40, 40, 0, 0, 8, 0, 0.0, {}};
  const chunkwise::SchedulerView view{{}, std::span(&seq, 1), {32, 8, pool.free_count(), 16, pool.total()}};
  const auto plan = chunkwise::StallFreeBatching{}.plan(view);
  bool typed = false;
  try {
    (void)chunkwise::Model::load("/nonexistent/model.gguf");
  } catch (const chunkwise::Error& e) {
    typed = e.code() == chunkwise::ErrorCode::kIo;
  }
  const bool ok = items.size() == 1 && b.has_value() && plan.chunks.size() == 1 &&
                  plan.chunks[0].num_tokens == 32 && typed;
  std::printf("consumer: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
