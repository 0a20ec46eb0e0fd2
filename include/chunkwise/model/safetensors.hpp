// Safetensors reader (Hugging Face's tensor file: 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}}, then the raw data) and the Hugging Face
// config.json / weight-name mapping of Llama-family checkpoints. Parsing works on an in-memory
// byte span so that it can be fuzzed; malformed input raises chunkwise::Error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chunkwise/model/config.hpp"
#include "chunkwise/model/weights.hpp"

namespace chunkwise::safetensors {

// The reference implementation refuses headers above 100 MB; so do we.
inline constexpr std::uint64_t kMaxHeaderBytes = 100ull << 20;
inline constexpr std::size_t kMaxRank = 8;

enum class Dtype {
  kBool,
  kU8,
  kI8,
  kF8_E5M2,
  kF8_E4M3,
  kI16,
  kU16,
  kF16,
  kBF16,
  kI32,
  kU32,
  kF32,
  kF64,
  kI64,
  kU64
};
[[nodiscard]] std::string_view to_string(Dtype dtype) noexcept;
[[nodiscard]] std::size_t dtype_size(Dtype dtype) noexcept;

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<std::int64_t> shape;  // outermost first (row-major)
  std::uint64_t begin = 0;          // data_offsets, relative to Header::data_offset
  std::uint64_t end = 0;
  std::uint64_t n_elements = 0;
};

struct Header {
  std::vector<TensorInfo> tensors;                            // sorted by name
  std::vector<std::pair<std::string, std::string>> metadata;  // "__metadata__"
  std::uint64_t data_offset = 0;                              // 8 + header length
  std::uint64_t file_size = 0;

  [[nodiscard]] const TensorInfo* find(std::string_view name) const;
};

// Parses and checks the header of an in-memory safetensors image: every tensor's byte range must
// match dtype * shape, lie inside the data section and not overlap another. Throws
// Error(kModelFormat) for malformed input and Error(kUnsupported) for an unknown dtype.
[[nodiscard]] Header parse(std::span<const std::byte> bytes);

// The bytes of tensor `t` inside the image that `header` was parsed from.
[[nodiscard]] std::span<const std::byte> tensor_data(const Header& header, std::span<const std::byte> bytes,
                                                     const TensorInfo& t);

// fp32 copy of an F32, F16 or BF16 tensor; Error(kUnsupported) for other dtypes.
[[nodiscard]] std::vector<float> to_float(const Header& header, std::span<const std::byte> bytes,
                                          const TensorInfo& t);

// ModelConfig from the text of a Hugging Face config.json (LlamaForCausalLM and the Mistral and
// Qwen2 look-alikes). Throws Error(kModelFormat) for malformed JSON or values, Error(kUnsupported)
// for features the Llama forward does not have (other activations, sliding window, RoPE types).
[[nodiscard]] ModelConfig config_from_json(std::string_view json_text);

// One parsed shard of a checkpoint.
struct Shard {
  std::string name;  // file name, for messages
  Header header;
  std::span<const std::byte> bytes;
};

// Llama weights from Hugging Face tensor names across shards, checked against config. Throws
// Error(kModelFormat) for a missing, duplicated or mis-shaped tensor and Error(kUnsupported) for
// tensors the mapping would have to drop (biases).
[[nodiscard]] ModelWeights weights_from_shards(const ModelConfig& config, std::span<const Shard> shards);

}  // namespace chunkwise::safetensors
