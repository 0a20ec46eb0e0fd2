// The smallest embedding of chunkwise: load a model, submit a few prompts, step until done.
//   offline_batch [MODEL.gguf]
#include <chunkwise/sched/inference_session.hpp>
#include <cstdio>

int main(int argc, char** argv) try {
  auto model = chunkwise::Model::load(argc > 1 ? argv[1] : chunkwise::default_model_path());
  chunkwise::InferenceSession<> session(model);
  for (const char* q :
       {"What is the capital of France?", "Name three primary colors.", "What is 12 times 7?"}) {
    chunkwise::Request r;
    r.prompt_text = q;
    r.chat = true;
    r.max_new_tokens = 48;
    session.submit(r);
  }
  while (session.has_work()) session.step();
  for (const auto& f : session.take_finished())
    std::printf("#%llu: %s\n\n", static_cast<unsigned long long>(f.id), f.output_text.c_str());
  return 0;
} catch (const chunkwise::Error& e) {
  std::fprintf(stderr, "offline_batch: %s\n", e.what());
  return 1;
}
