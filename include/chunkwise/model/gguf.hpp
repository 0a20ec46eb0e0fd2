// GGUF reader (llama.cpp's model file format, versions 2 and 3, little-endian): header, metadata
// key/values of every GGUF value type (nested arrays included), tensor directory, and the mapping
// of a Llama-family GGUF onto LoadedModel. Parsing works on an in-memory byte span so that it can
// be fuzzed; every malformed input raises chunkwise::Error and nothing is allocated beyond what
// the bytes justify.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "chunkwise/model/loader.hpp"

namespace chunkwise {

// Read-only image of a whole file: memory-mapped on POSIX systems, read into memory elsewhere.
// Throws Error(kIo) when the file cannot be opened or read.
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

 private:
  void release() noexcept;

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
  std::vector<std::byte> buffer_;  // holds the file where mmap is unavailable
};

namespace gguf {

// Limits on hostile files (llama.cpp has the same dimension limit).
inline constexpr std::uint32_t kMaxDims = 4;
inline constexpr int kMaxArrayDepth = 8;
inline constexpr std::uint64_t kDefaultAlignment = 32;

enum class ValueType : std::uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
[[nodiscard]] std::string_view to_string(ValueType type) noexcept;

// ggml tensor type ids (ggml.h `enum ggml_type`); fixed by the file format.
enum class TensorType : std::uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kBF16 = 30,
};

struct TypeTraits {
  std::string_view name;
  std::int64_t block_elems;
  std::int64_t block_bytes;
};
// Block geometry of a ggml type id, or nullptr for an id this reader does not know. Known types
// are parsed (and their bytes bounds-checked) even when they cannot be dequantized.
[[nodiscard]] const TypeTraits* type_traits(std::uint32_t type_id) noexcept;

class Value;

// A GGUF array. Numeric and bool elements stay in their file encoding (little-endian, packed) so
// a large array costs no more memory than it does on disk.
struct Array {
  ValueType type = ValueType::kUint8;  // element type
  std::uint64_t count = 0;
  std::vector<std::byte> scalars;    // count * element size bytes, for numeric and bool elements
  std::vector<std::string> strings;  // for kString elements
  std::vector<Value> arrays;         // for kArray elements

  [[nodiscard]] std::size_t size() const noexcept { return static_cast<std::size_t>(count); }
  // Element i as an integer (integer or bool element types); throws Error(kModelFormat).
  [[nodiscard]] std::int64_t int_at(std::size_t i) const;
  // Element i as a double (float or integer element types); throws Error(kModelFormat).
  [[nodiscard]] double float_at(std::size_t i) const;
};

class Value {
 public:
  using Storage = std::variant<std::monostate, std::int64_t, std::uint64_t, double, bool, std::string, Array>;

  Value() = default;
  Value(ValueType type, Storage data) : type_(type), data_(std::move(data)) {}

  [[nodiscard]] ValueType type() const noexcept { return type_; }
  [[nodiscard]] bool is_integer() const noexcept;
  [[nodiscard]] bool is_number() const noexcept;  // integer or float
  // Typed access; a mismatched type throws Error(kModelFormat) naming `what` (usually the key).
  [[nodiscard]] std::int64_t as_int(std::string_view what = "value") const;
  [[nodiscard]] double as_float(std::string_view what = "value") const;
  [[nodiscard]] bool as_bool(std::string_view what = "value") const;
  [[nodiscard]] const std::string& as_string(std::string_view what = "value") const;
  [[nodiscard]] const Array& as_array(std::string_view what = "value") const;

 private:
  ValueType type_ = ValueType::kUint8;
  Storage data_;
};

struct TensorInfo {
  std::string name;
  std::vector<std::int64_t> ne;  // dimensions innermost first: ne[0] is the contiguous one
  std::uint32_t type_id = 0;     // ggml type id (see TensorType)
  std::uint64_t offset = 0;      // relative to File::data_offset
  std::uint64_t n_elements = 0;
  std::uint64_t n_bytes = 0;

  [[nodiscard]] TensorType type() const noexcept { return static_cast<TensorType>(type_id); }
};

// The parsed directory of a GGUF file; tensor bytes stay in the caller's buffer.
struct File {
  std::uint32_t version = 3;
  std::vector<std::pair<std::string, Value>> metadata;  // in file order
  std::vector<TensorInfo> tensors;                      // in file order
  std::uint64_t alignment = kDefaultAlignment;
  std::uint64_t data_offset = 0;  // absolute offset of the tensor data section
  std::uint64_t file_size = 0;

  [[nodiscard]] const Value* find(std::string_view key) const;
  [[nodiscard]] const TensorInfo* find_tensor(std::string_view name) const;

  // Lookup tables built by parse(); name -> index.
  std::map<std::string, std::size_t, std::less<>> key_index;
  std::map<std::string, std::size_t, std::less<>> tensor_index;
};

// Parses header, metadata and tensor directory of an in-memory GGUF image, checking that every
// tensor's data lies inside `bytes`, is aligned and does not overlap another. Throws
// Error(kModelFormat) for malformed input and Error(kUnsupported) for an unknown version or
// tensor type.
[[nodiscard]] File parse(std::span<const std::byte> bytes);

// The bytes of tensor `t` inside the image that `file` was parsed from.
[[nodiscard]] std::span<const std::byte> tensor_data(const File& file, std::span<const std::byte> bytes,
                                                     const TensorInfo& t);

// fp32 copy of a tensor (F32, F16, BF16, Q8_0, Q4_0, Q4_1); Error(kUnsupported) for other types.
[[nodiscard]] std::vector<float> to_float(const File& file, std::span<const std::byte> bytes,
                                          const TensorInfo& t);

// Tokenizer metadata (tokenizer.ggml.*, tokenizer.chat_template); tokens stay empty when the file
// has none.
[[nodiscard]] TokenizerSpec tokenizer_spec(const File& file);

// Maps a Llama-family GGUF ("llama", "mistral", "qwen2") onto config, fp32 weights in Hugging Face
// orientation (llama.cpp's Q/K row permutation undone) and tokenizer. This is load_gguf_model
// without the file: the fuzzer calls it on arbitrary bytes.
[[nodiscard]] LoadedModel to_model(const File& file, std::span<const std::byte> bytes,
                                   std::string source = {});

// A GGUF file mapped into memory and parsed.
class Reader {
 public:
  explicit Reader(const std::filesystem::path& path) : map_(path), file_(parse(map_.bytes())) {}

  [[nodiscard]] const File& file() const noexcept { return file_; }
  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return map_.bytes(); }
  [[nodiscard]] std::span<const std::byte> tensor_data(const TensorInfo& t) const {
    return gguf::tensor_data(file_, map_.bytes(), t);
  }

 private:
  MappedFile map_;
  File file_;
};

}  // namespace gguf
}  // namespace chunkwise
