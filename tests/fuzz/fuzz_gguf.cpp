// libFuzzer target: arbitrary bytes through the GGUF parser, the typed metadata accessors, tensor
// dequantization and the full Llama mapping. Only chunkwise::Error may come out; a crash, a
// sanitizer report, another exception or an allocation beyond -rss_limit_mb is a bug.
#include <cstddef>
#include <cstdint>
#include <span>

#include "chunkwise/core/error.hpp"
#include "chunkwise/model/gguf.hpp"

namespace {

namespace gguf = chunkwise::gguf;

void touch(const gguf::Value& v) {
  try {
    switch (v.type()) {
      case gguf::ValueType::kString:
        (void)v.as_string();
        break;
      case gguf::ValueType::kBool:
        (void)v.as_bool();
        break;
      case gguf::ValueType::kFloat32:
      case gguf::ValueType::kFloat64:
        (void)v.as_float();
        break;
      case gguf::ValueType::kArray: {
        const gguf::Array& a = v.as_array();
        if (a.size() > 0) {
          if (a.type == gguf::ValueType::kArray) {
            touch(a.arrays.front());
          } else if (a.type != gguf::ValueType::kString) {
            (void)a.float_at(0);
            (void)a.int_at(a.size() - 1);
          }
        }
        break;
      }
      default:
        (void)v.as_int();
        break;
    }
  } catch (const chunkwise::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const gguf::File file = gguf::parse(bytes);
    for (const auto& [key, value] : file.metadata) touch(value);
    for (const gguf::TensorInfo& t : file.tensors) {
      try {
        (void)gguf::to_float(file, bytes, t);
      } catch (const chunkwise::Error&) {
      }
    }
    (void)gguf::to_model(file, bytes, "fuzz");
  } catch (const chunkwise::Error&) {
  }
  return 0;
}
