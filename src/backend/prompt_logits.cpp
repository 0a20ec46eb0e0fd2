#include "chunkwise/backend/prompt_logits.hpp"

#include <algorithm>
#include <string>

#include "chunkwise/core/error.hpp"

namespace chunkwise {

std::vector<float> prompt_logits(std::shared_ptr<const Model> model, std::span<const TokenId> tokens,
                                 int block_size, const BackendProvider* provider, SparseSelector* sparse,
                                 int chunk, int first_logit) {
  check(!tokens.empty(), ErrorCode::kInvalidArgument, "no tokens");
  const ModelConfig& c = model->config();
  check(static_cast<long long>(tokens.size()) <= c.max_context, ErrorCode::kContextOverflow,
        std::to_string(tokens.size()) + " tokens exceed the model's context of " +
            std::to_string(c.max_context));
  check(chunk >= 0, ErrorCode::kInvalidArgument, "prompt_logits: chunk must be >= 0");
  const auto n = static_cast<std::int32_t>(tokens.size());
  check(first_logit >= 0 && first_logit < n, ErrorCode::kInvalidArgument,
        "prompt_logits: first_logit must be in [0, tokens)");
  const int blocks = (n + block_size - 1) / block_size;
  AnyBackend backend = BackendMaker<AnyBackend>::make(provider, model, blocks, block_size);
  std::vector<float> logits(static_cast<std::size_t>(n - first_logit) * static_cast<std::size_t>(c.vocab));
  const std::int32_t step = chunk > 0 ? chunk : n;
  for (std::int32_t begin = 0; begin < n; begin += step) {
    const std::int32_t end = std::min(n, begin + step);
    ForwardBatch b;
    b.sparse = sparse;
    b.tokens.assign(tokens.begin() + begin, tokens.begin() + end);
    for (std::int32_t i = begin; i < end; ++i) {
      b.positions.push_back(i);
      b.slots.push_back(i);  // pages are 0..blocks-1 in order, so slot == position
      if (i >= first_logit) b.logit_rows.push_back(i - begin);
    }
    const int used = (end + block_size - 1) / block_size;
    for (int p = 0; p < used; ++p) b.pages.push_back(p);
    b.query_start = {0, end - begin};
    b.page_start = {0, used};
    b.kv_len = {end};
    const std::size_t out_begin =
        static_cast<std::size_t>(std::max(begin, first_logit) - first_logit) * c.vocab;
    backend.forward(b, std::span<float>(logits).subspan(out_begin, b.logit_rows.size() * c.vocab));
  }
  return logits;
}

}  // namespace chunkwise
