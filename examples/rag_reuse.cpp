// Retrieval-augmented generation with chunk reuse. A small corpus (bench/reuse/corpus.jsonl:
// fictional passages with two questions each) is the document store; a keyword retriever picks the
// k passages that share most words with a question; the prompt is a system prefix, those passages
// (one segment each) and the question. The same questions run under each reuse policy over one
// ChunkStore: a first pass fills the store (every passage prefilled on its own once), the second
// is measured with the store warm.
//   rag_reuse [CORPUS.jsonl [MODEL.gguf [K]]]
#include <algorithm>
#include <cctype>
#include <chunkwise/kv/chunk_store.hpp>
#include <chunkwise/policy/batching/prefill_first_batching.hpp>
#include <chunkwise/policy/reuse/adaptive_blend_reuse.hpp>
#include <chunkwise/policy/reuse/blend_reuse.hpp>
#include <chunkwise/policy/reuse/full_reuse.hpp>
#include <chunkwise/sched/inference_session.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace {

struct Passage {
  std::string text;
  std::set<std::string> words;
};
struct Question {
  std::string question, answer;
};

std::set<std::string> words_of(const std::string& s) {
  std::set<std::string> out;
  std::string w;
  for (const char ch : s + " ") {
    if (std::isalnum(static_cast<unsigned char>(ch)) != 0) {
      w.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
    } else if (!w.empty()) {
      if (w.size() > 3) out.insert(w);  // skip the short function words
      w.clear();
    }
  }
  return out;
}

// Lower case, letters and digits, single spaces: "Odile Brannock." matches "odile brannock".
std::string normalize(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    if (std::isalnum(static_cast<unsigned char>(ch)) != 0) {
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
    } else if (!out.empty() && out.back() != ' ') {
      out.push_back(' ');
    }
  }
  return out;
}

// Whether the answer's words appear, in order and whole, in the output.
bool contains_answer(const std::string& output, const std::string& answer) {
  std::string hay(1, ' '), needle(1, ' ');
  hay.append(normalize(output)).push_back(' ');
  needle.append(normalize(answer)).push_back(' ');
  return hay.find(needle) != std::string::npos;
}

// The k passages sharing most words with the question, best last (nearest the question).
std::vector<const Passage*> retrieve(const std::vector<Passage>& corpus, const std::string& question, int k) {
  const std::set<std::string> q = words_of(question);
  std::vector<std::pair<int, const Passage*>> scored;
  for (const Passage& p : corpus) {
    int common = 0;
    for (const std::string& w : q) common += p.words.count(w) != 0 ? 1 : 0;
    scored.emplace_back(common, &p);
  }
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<const Passage*> out;
  for (int i = std::min(k, static_cast<int>(scored.size())) - 1; i >= 0; --i) out.push_back(scored[i].second);
  return out;
}

// Runs every question under one reuse policy, twice (fill, then warm), and prints the warm pass.
template <class Reuse>
void run_policy(const char* name, Reuse reuse, const std::shared_ptr<const chunkwise::Model>& model,
                const std::shared_ptr<chunkwise::ChunkStore>& store, const std::vector<Passage>& corpus,
                const std::vector<Question>& questions, int k) {
  chunkwise::SessionConfig config;
  config.chunk_store = store;
  config.prefix_caching = false;  // every prompt prefilled: the policies differ only in chunk reuse
  config.max_batch_tokens = 8192;
  chunkwise::InferenceSession<chunkwise::PrefillFirstBatching, chunkwise::LruEviction,
                              chunkwise::DenseAttention, Reuse>
      session(model, config, {}, {}, {}, reuse);
  double ttft = 0;
  int right = 0, reused = 0, prompt = 0;
  for (int pass = 0; pass < 2; ++pass) {
    for (const Question& q : questions) {
      chunkwise::Request r;
      r.max_new_tokens = pass == 0 ? 1 : 16;
      r.segments.push_back(
          {chunkwise::SegmentKind::kPrefix,
           "<|im_start|>system\nYou are a helpful assistant. Answer the question with a short "
           "phrase taken from the passages.<|im_end|>\n<|im_start|>user\n",
           {}});
      for (const Passage* p : retrieve(corpus, q.question, k))
        r.segments.push_back({chunkwise::SegmentKind::kChunk, p->text, {}});
      r.segments.push_back({chunkwise::SegmentKind::kQuestion,
                            "Question: " + q.question + "<|im_end|>\n<|im_start|>assistant\n",
                            {}});
      session.submit(std::move(r));
      while (session.has_work()) session.step();
      for (const chunkwise::FinishedRequest& f : session.take_finished()) {
        if (pass == 0) continue;
        ttft += f.timings.ttft();
        right += contains_answer(f.output_text, q.answer) ? 1 : 0;
        reused += f.prompt_tokens_reused;
        prompt += static_cast<int>(f.prompt_tokens.size());
      }
    }
  }
  const auto n = static_cast<double>(questions.size());
  std::printf(
      "%-15s answered %2d of %zu   mean time to first token %7.1f ms   prompt tokens reused %5.1f%%\n", name,
      right, questions.size(), 1e3 * ttft / n, 100.0 * reused / std::max(prompt, 1));
}

}  // namespace

int main(int argc, char** argv) try {
  const std::string corpus_path = argc > 1 ? argv[1] : "bench/reuse/corpus.jsonl";
  auto model = chunkwise::Model::load(argc > 2 ? argv[2] : chunkwise::default_model_path());
  const int k = argc > 3 ? std::max(1, std::atoi(argv[3])) : 4;
  std::ifstream in(corpus_path);
  if (!in) throw chunkwise::Error(chunkwise::ErrorCode::kIo, "cannot read " + corpus_path);
  std::vector<Passage> corpus;
  std::vector<Question> questions;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    const std::string text =
        "Passage: " + j["title"].get<std::string>() + "\n" + j["text"].get<std::string>() + "\n\n";
    corpus.push_back({text, words_of(text)});
    for (const auto& q : j["questions"]) questions.push_back({q["question"], q["answer"]});
  }
  questions.resize(std::min<std::size_t>(questions.size(), 12));
  std::printf("%zu passages, %zu questions, %d retrieved passages per prompt\n", corpus.size(),
              questions.size(), k);

  chunkwise::ChunkStore::Config sc;
  sc.model_id = chunkwise::model_fingerprint(*model);
  auto store = std::make_shared<chunkwise::ChunkStore>(sc);
  run_policy("prefix-only", chunkwise::PrefixOnlyReuse{}, model, store, corpus, questions, k);
  run_policy("full-reuse", chunkwise::FullReuse{}, model, store, corpus, questions, k);
  run_policy("blend", chunkwise::BlendReuse{}, model, store, corpus, questions, k);
  run_policy("adaptive-blend", chunkwise::AdaptiveBlendReuse{}, model, store, corpus, questions, k);
  const chunkwise::ChunkStoreStats st = store->stats();
  std::printf("chunk store: %lld entries, %.1f MiB in RAM, %lld hits\n",
              static_cast<long long>(st.host_entries), static_cast<double>(st.host_bytes) / (1 << 20),
              static_cast<long long>(st.host_hits));
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "rag_reuse: %s\n", e.what());
  return 1;
}
