#include "chunkwise/backend/prompt_logits.hpp"

#include <string>

#include "chunkwise/core/error.hpp"

namespace chunkwise {

std::vector<float> prompt_logits(std::shared_ptr<const Model> model, std::span<const TokenId> tokens,
                                 int block_size, const BackendProvider* provider) {
  check(!tokens.empty(), ErrorCode::kInvalidArgument, "no tokens");
  const ModelConfig& c = model->config();
  check(static_cast<long long>(tokens.size()) <= c.max_context, ErrorCode::kContextOverflow,
        std::to_string(tokens.size()) + " tokens exceed the model's context of " +
            std::to_string(c.max_context));
  const auto n = static_cast<std::int32_t>(tokens.size());
  const int blocks = (n + block_size - 1) / block_size;
  AnyBackend backend = BackendMaker<AnyBackend>::make(provider, model, blocks, block_size);
  ForwardBatch b;
  b.tokens.assign(tokens.begin(), tokens.end());
  for (std::int32_t i = 0; i < n; ++i) {
    b.positions.push_back(i);
    b.slots.push_back(i);  // pages are 0..blocks-1 in order, so slot == position
    b.logit_rows.push_back(i);
  }
  for (int p = 0; p < blocks; ++p) b.pages.push_back(p);
  b.query_start = {0, n};
  b.page_start = {0, blocks};
  b.kv_len = {n};
  std::vector<float> logits(static_cast<std::size_t>(n) * static_cast<std::size_t>(c.vocab));
  backend.forward(b, logits);
  return logits;
}

}  // namespace chunkwise
