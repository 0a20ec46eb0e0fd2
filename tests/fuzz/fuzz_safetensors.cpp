// libFuzzer target: arbitrary bytes as a safetensors file (header parse, fp32 conversion, Llama
// weight mapping with the tiny config of the seed corpus) and as a config.json text. Only
// chunkwise::Error may come out.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "chunkwise/core/error.hpp"
#include "chunkwise/model/safetensors.hpp"

namespace {

namespace st = chunkwise::safetensors;

// Matches corpus/config.json and the tensors in corpus/safetensors/*.safetensors.
chunkwise::ModelConfig tiny_config() {
  chunkwise::ModelConfig c;
  c.n_layers = 1;
  c.hidden = 8;
  c.ffn = 16;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  c.vocab = 16;
  c.max_context = 128;
  c.tied_embeddings = true;
  return c;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const chunkwise::ModelConfig config = tiny_config();
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const st::Header header = st::parse(bytes);
    for (const st::TensorInfo& t : header.tensors) {
      try {
        (void)st::to_float(header, bytes, t);
      } catch (const chunkwise::Error&) {
      }
    }
    const st::Shard shard{"fuzz", header, bytes};
    (void)st::weights_from_shards(config, std::span<const st::Shard>(&shard, 1));
  } catch (const chunkwise::Error&) {
  }
  try {
    (void)st::config_from_json(std::string_view(reinterpret_cast<const char*>(data), size));
  } catch (const chunkwise::Error&) {
  }
  return 0;
}
