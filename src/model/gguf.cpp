#include "chunkwise/model/gguf.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <numbers>
#include <optional>
#include <set>

#include "chunkwise/core/error.hpp"
#include "detail/dequant.hpp"

#if defined(__unix__) || defined(__APPLE__)
#define CHUNKWISE_HAVE_MMAP 1
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#endif

namespace chunkwise {

// ---- MappedFile --------------------------------------------------------------------------------

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
#ifdef CHUNKWISE_HAVE_MMAP
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    throw Error(ErrorCode::kIo, fmt::format("cannot open '{}': {}", path.string(), std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::kIo, fmt::format("'{}' is not a regular file", path.string()));
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);
    if (p == MAP_FAILED) {
      size_ = 0;
      throw Error(ErrorCode::kIo, fmt::format("cannot map '{}': {}", path.string(), std::strerror(err)));
    }
    // Loading touches every byte once; ask for read-ahead.
    ::madvise(p, size_, MADV_WILLNEED);
    data_ = static_cast<const std::byte*>(p);
    mapped_ = true;
  } else {
    ::close(fd);
  }
#else
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw Error(ErrorCode::kIo, fmt::format("cannot open '{}'", path.string()));
  const auto end = in.tellg();
  if (end < 0) throw Error(ErrorCode::kIo, fmt::format("cannot size '{}'", path.string()));
  buffer_.resize(static_cast<std::size_t>(end));
  in.seekg(0);
  if (!in.read(reinterpret_cast<char*>(buffer_.data()), static_cast<std::streamsize>(buffer_.size()))) {
    throw Error(ErrorCode::kIo, fmt::format("short read on '{}'", path.string()));
  }
  data_ = buffer_.data();
  size_ = buffer_.size();
#endif
}

void MappedFile::release() noexcept {
#ifdef CHUNKWISE_HAVE_MMAP
  if (mapped_ && data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
#endif
  data_ = nullptr;
  size_ = 0;
  mapped_ = false;
  buffer_.clear();
}

MappedFile::~MappedFile() {
  release();
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(other.data_),
      size_(other.size_),
      mapped_(other.mapped_),
      buffer_(std::move(other.buffer_)) {
  // A moved vector keeps its heap block, so data_ stays valid for the read-into-memory case.
  other.data_ = nullptr;
  other.size_ = 0;
  other.mapped_ = false;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = other.data_;
    size_ = other.size_;
    mapped_ = other.mapped_;
    buffer_ = std::move(other.buffer_);
    other.data_ = nullptr;
    other.size_ = 0;
    other.mapped_ = false;
  }
  return *this;
}

namespace gguf {
namespace {

template <class T>
T load_le(const std::byte* p) noexcept {
  T v;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(&v, p, sizeof(T));
  } else {
    std::array<std::byte, sizeof(T)> tmp;
    for (std::size_t i = 0; i < sizeof(T); ++i) tmp[i] = p[sizeof(T) - 1 - i];
    std::memcpy(&v, tmp.data(), sizeof(T));
  }
  return v;
}

[[noreturn]] void fail(std::string message) {
  throw Error(ErrorCode::kModelFormat, "gguf: " + message);
}

constexpr std::uint32_t kMaxValueType = 12;

// Bytes one element of a scalar type takes; 0 for string and array.
std::uint64_t scalar_size(ValueType t) noexcept {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
      return 8;
    case ValueType::kString:
    case ValueType::kArray:
      return 0;
  }
  return 0;
}

// Bounds-checked reader over the file image. `what` and `key` only feed error messages and are
// formatted only when something is wrong, so the hot path (49k token strings) stays cheap.
class Cursor {
 public:
  explicit Cursor(std::span<const std::byte> bytes) : bytes_(bytes) {}

  [[nodiscard]] std::uint64_t pos() const noexcept { return pos_; }
  [[nodiscard]] std::uint64_t remaining() const noexcept { return bytes_.size() - pos_; }

  void need(std::uint64_t n, std::string_view what, std::string_view key) const {
    if (n > remaining()) {
      fail(fmt::format("truncated: {}{}{} needs {} bytes at offset {} but the file ends at {}", what,
                       key.empty() ? "" : " of ", key.empty() ? std::string() : fmt::format("'{}'", key), n,
                       pos_, bytes_.size()));
    }
  }

  template <class T>
  T read(std::string_view what, std::string_view key = {}) {
    need(sizeof(T), what, key);
    const T v = load_le<T>(bytes_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }

  std::span<const std::byte> take(std::uint64_t n, std::string_view what, std::string_view key = {}) {
    need(n, what, key);
    auto s = bytes_.subspan(static_cast<std::size_t>(pos_), static_cast<std::size_t>(n));
    pos_ += n;
    return s;
  }

  std::string read_string(std::string_view what, std::string_view key = {}) {
    const auto n = read<std::uint64_t>(what, key);
    if (n > remaining()) {
      fail(fmt::format("{}{}{}: string length {} at offset {} runs past the end of the file (size {})", what,
                       key.empty() ? "" : " of ", key.empty() ? std::string() : fmt::format("'{}'", key), n,
                       pos_ - 8, bytes_.size()));
    }
    auto s = take(n, what, key);
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }

 private:
  std::span<const std::byte> bytes_;
  std::uint64_t pos_ = 0;
};

ValueType checked_value_type(std::uint32_t raw, std::string_view key) {
  if (raw > kMaxValueType) fail(fmt::format("key '{}' has unknown value type {}", key, raw));
  return static_cast<ValueType>(raw);
}

Value read_value(Cursor& c, ValueType type, std::string_view key, int depth);

Array read_array(Cursor& c, std::string_view key, int depth) {
  if (depth > kMaxArrayDepth)
    fail(fmt::format("key '{}': arrays nested deeper than {}", key, kMaxArrayDepth));
  Array a;
  a.type = checked_value_type(c.read<std::uint32_t>("array element type", key), key);
  a.count = c.read<std::uint64_t>("array length", key);
  // Every element takes at least this many bytes in the file, so a count the rest of the file
  // cannot hold is rejected before anything is allocated for it.
  const std::uint64_t min_elem = a.type == ValueType::kString  ? 8
                                 : a.type == ValueType::kArray ? 12
                                                               : scalar_size(a.type);
  if (a.count > c.remaining() / min_elem) {
    fail(fmt::format("key '{}': array of {} {} elements at offset {} cannot fit in the {} bytes left", key,
                     a.count, to_string(a.type), c.pos() - 12, c.remaining()));
  }
  if (a.type == ValueType::kString) {
    a.strings.reserve(a.size());
    for (std::uint64_t i = 0; i < a.count; ++i) a.strings.push_back(c.read_string("array string", key));
  } else if (a.type == ValueType::kArray) {
    a.arrays.reserve(a.size());
    for (std::uint64_t i = 0; i < a.count; ++i) {
      a.arrays.push_back(Value(ValueType::kArray, read_array(c, key, depth + 1)));
    }
  } else {
    auto s = c.take(a.count * min_elem, "array data", key);
    a.scalars.assign(s.begin(), s.end());
  }
  return a;
}

Value read_value(Cursor& c, ValueType type, std::string_view key, int depth) {
  switch (type) {
    case ValueType::kUint8:
      return {type, std::int64_t{c.read<std::uint8_t>("value", key)}};
    case ValueType::kInt8:
      return {type, std::int64_t{c.read<std::int8_t>("value", key)}};
    case ValueType::kUint16:
      return {type, std::int64_t{c.read<std::uint16_t>("value", key)}};
    case ValueType::kInt16:
      return {type, std::int64_t{c.read<std::int16_t>("value", key)}};
    case ValueType::kUint32:
      return {type, std::int64_t{c.read<std::uint32_t>("value", key)}};
    case ValueType::kInt32:
      return {type, std::int64_t{c.read<std::int32_t>("value", key)}};
    case ValueType::kUint64:
      return {type, c.read<std::uint64_t>("value", key)};
    case ValueType::kInt64:
      return {type, c.read<std::int64_t>("value", key)};
    case ValueType::kFloat32:
      return {type, double{c.read<float>("value", key)}};
    case ValueType::kFloat64:
      return {type, c.read<double>("value", key)};
    case ValueType::kBool:
      return {type, c.read<std::uint8_t>("value", key) != 0};
    case ValueType::kString:
      return {type, c.read_string("string value", key)};
    case ValueType::kArray:
      return {type, read_array(c, key, depth + 1)};
  }
  fail(fmt::format("key '{}' has unknown value type {}", key, static_cast<std::uint32_t>(type)));
}

// ggml type table (ggml.c type_traits); ids 4, 5 and 31..33 are retired.
struct TypeEntry {
  std::uint32_t id;
  TypeTraits traits;
};
constexpr std::array kTypes{
    TypeEntry{0, {"F32", 1, 4}},         TypeEntry{1, {"F16", 1, 2}},
    TypeEntry{2, {"Q4_0", 32, 18}},      TypeEntry{3, {"Q4_1", 32, 20}},
    TypeEntry{6, {"Q5_0", 32, 22}},      TypeEntry{7, {"Q5_1", 32, 24}},
    TypeEntry{8, {"Q8_0", 32, 34}},      TypeEntry{9, {"Q8_1", 32, 36}},
    TypeEntry{10, {"Q2_K", 256, 84}},    TypeEntry{11, {"Q3_K", 256, 110}},
    TypeEntry{12, {"Q4_K", 256, 144}},   TypeEntry{13, {"Q5_K", 256, 176}},
    TypeEntry{14, {"Q6_K", 256, 210}},   TypeEntry{15, {"Q8_K", 256, 292}},
    TypeEntry{16, {"IQ2_XXS", 256, 66}}, TypeEntry{17, {"IQ2_XS", 256, 74}},
    TypeEntry{18, {"IQ3_XXS", 256, 98}}, TypeEntry{19, {"IQ1_S", 256, 50}},
    TypeEntry{20, {"IQ4_NL", 32, 18}},   TypeEntry{21, {"IQ3_S", 256, 110}},
    TypeEntry{22, {"IQ2_S", 256, 82}},   TypeEntry{23, {"IQ4_XS", 256, 136}},
    TypeEntry{24, {"I8", 1, 1}},         TypeEntry{25, {"I16", 1, 2}},
    TypeEntry{26, {"I32", 1, 4}},        TypeEntry{27, {"I64", 1, 8}},
    TypeEntry{28, {"F64", 1, 8}},        TypeEntry{29, {"IQ1_M", 256, 56}},
    TypeEntry{30, {"BF16", 1, 2}},       TypeEntry{34, {"TQ1_0", 256, 54}},
    TypeEntry{35, {"TQ2_0", 256, 66}},   TypeEntry{39, {"MXFP4", 32, 17}},
};

std::string type_name(std::uint32_t id) {
  const TypeTraits* t = type_traits(id);
  return t ? std::string(t->name) : fmt::format("#{}", id);
}

// The ggml types we can dequantize.
bool elem_type(std::uint32_t id, detail::ElemType& out) noexcept {
  switch (static_cast<TensorType>(id)) {
    case TensorType::kF32:
      out = detail::ElemType::kF32;
      return true;
    case TensorType::kF16:
      out = detail::ElemType::kF16;
      return true;
    case TensorType::kBF16:
      out = detail::ElemType::kBF16;
      return true;
    case TensorType::kQ8_0:
      out = detail::ElemType::kQ8_0;
      return true;
    case TensorType::kQ4_0:
      out = detail::ElemType::kQ4_0;
      return true;
    case TensorType::kQ4_1:
      out = detail::ElemType::kQ4_1;
      return true;
    default:
      return false;
  }
}

detail::ElemType require_elem_type(const TensorInfo& t) {
  detail::ElemType e{};
  if (!elem_type(t.type_id, e)) {
    throw Error(
        ErrorCode::kUnsupported,
        fmt::format("gguf: tensor '{}' has type {}, which cannot be dequantized (supported: F32, F16, BF16, "
                    "Q8_0, Q4_0, Q4_1)",
                    t.name, type_name(t.type_id)));
  }
  return e;
}

}  // namespace

// ---- types and values ------------------------------------------------------------------------------

std::string_view to_string(ValueType type) noexcept {
  switch (type) {
    case ValueType::kUint8:
      return "uint8";
    case ValueType::kInt8:
      return "int8";
    case ValueType::kUint16:
      return "uint16";
    case ValueType::kInt16:
      return "int16";
    case ValueType::kUint32:
      return "uint32";
    case ValueType::kInt32:
      return "int32";
    case ValueType::kFloat32:
      return "float32";
    case ValueType::kBool:
      return "bool";
    case ValueType::kString:
      return "string";
    case ValueType::kArray:
      return "array";
    case ValueType::kUint64:
      return "uint64";
    case ValueType::kInt64:
      return "int64";
    case ValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

const TypeTraits* type_traits(std::uint32_t type_id) noexcept {
  for (const auto& e : kTypes) {
    if (e.id == type_id) return &e.traits;
  }
  return nullptr;
}

std::int64_t Array::int_at(std::size_t i) const {
  if (i >= size()) fail(fmt::format("array index {} out of range (size {})", i, count));
  const std::byte* p = scalars.data() + i * scalar_size(type);
  switch (type) {
    case ValueType::kUint8:
      return load_le<std::uint8_t>(p);
    case ValueType::kInt8:
      return load_le<std::int8_t>(p);
    case ValueType::kUint16:
      return load_le<std::uint16_t>(p);
    case ValueType::kInt16:
      return load_le<std::int16_t>(p);
    case ValueType::kUint32:
      return load_le<std::uint32_t>(p);
    case ValueType::kInt32:
      return load_le<std::int32_t>(p);
    case ValueType::kInt64:
      return load_le<std::int64_t>(p);
    case ValueType::kBool:
      return load_le<std::uint8_t>(p) != 0 ? 1 : 0;
    case ValueType::kUint64: {
      const auto v = load_le<std::uint64_t>(p);
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        fail(fmt::format("array element {} = {} does not fit int64", i, v));
      }
      return static_cast<std::int64_t>(v);
    }
    default:
      fail(fmt::format("array of {} where integers were expected", to_string(type)));
  }
}

double Array::float_at(std::size_t i) const {
  if (i >= size()) fail(fmt::format("array index {} out of range (size {})", i, count));
  if (type == ValueType::kFloat32) return load_le<float>(scalars.data() + i * 4);
  if (type == ValueType::kFloat64) return load_le<double>(scalars.data() + i * 8);
  return static_cast<double>(int_at(i));
}

bool Value::is_integer() const noexcept {
  return std::holds_alternative<std::int64_t>(data_) || std::holds_alternative<std::uint64_t>(data_);
}

bool Value::is_number() const noexcept {
  return is_integer() || std::holds_alternative<double>(data_);
}

std::int64_t Value::as_int(std::string_view what) const {
  if (const auto* v = std::get_if<std::int64_t>(&data_)) return *v;
  if (const auto* u = std::get_if<std::uint64_t>(&data_)) {
    if (*u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      fail(fmt::format("'{}' = {} does not fit int64", what, *u));
    }
    return static_cast<std::int64_t>(*u);
  }
  fail(fmt::format("'{}' is {}, expected an integer", what, to_string(type_)));
}

double Value::as_float(std::string_view what) const {
  if (const auto* d = std::get_if<double>(&data_)) return *d;
  if (is_integer()) return static_cast<double>(as_int(what));
  fail(fmt::format("'{}' is {}, expected a number", what, to_string(type_)));
}

bool Value::as_bool(std::string_view what) const {
  if (const auto* b = std::get_if<bool>(&data_)) return *b;
  fail(fmt::format("'{}' is {}, expected bool", what, to_string(type_)));
}

const std::string& Value::as_string(std::string_view what) const {
  if (const auto* s = std::get_if<std::string>(&data_)) return *s;
  fail(fmt::format("'{}' is {}, expected string", what, to_string(type_)));
}

const Array& Value::as_array(std::string_view what) const {
  if (const auto* a = std::get_if<Array>(&data_)) return *a;
  fail(fmt::format("'{}' is {}, expected array", what, to_string(type_)));
}

const Value* File::find(std::string_view key) const {
  const auto it = key_index.find(key);
  return it == key_index.end() ? nullptr : &metadata[it->second].second;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  const auto it = tensor_index.find(name);
  return it == tensor_index.end() ? nullptr : &tensors[it->second];
}

// ---- parsing ---------------------------------------------------------------------------------------

File parse(std::span<const std::byte> bytes) {
  File f;
  f.file_size = bytes.size();
  if (bytes.size() < 4 || std::memcmp(bytes.data(), "GGUF", 4) != 0) {
    fail(fmt::format("bad magic: not a GGUF file ({} bytes)", bytes.size()));
  }
  Cursor c(bytes);
  (void)c.take(4, "magic");
  f.version = c.read<std::uint32_t>("version");
  if (f.version == 1) {
    throw Error(ErrorCode::kUnsupported,
                "gguf: version 1 files are not supported (re-convert with llama.cpp)");
  }
  if (f.version != 2 && f.version != 3) {
    const bool swapped = f.version == 0x02000000u || f.version == 0x03000000u;
    throw Error(ErrorCode::kUnsupported, swapped
                                             ? std::string("gguf: big-endian GGUF files are not supported")
                                             : fmt::format("gguf: unsupported version {}", f.version));
  }
  const auto n_tensors = c.read<std::uint64_t>("tensor count");
  const auto n_kv = c.read<std::uint64_t>("metadata count");
  // Smallest encodings: a key/value is key length (8) + key (>= 1) + type (4) + a byte of value;
  // a tensor info is name length (8) + n_dims (4) + type (4) + offset (8).
  constexpr std::uint64_t kMinKv = 14;
  constexpr std::uint64_t kMinTensor = 24;
  if (n_kv > c.remaining() / kMinKv || n_tensors > c.remaining() / kMinTensor ||
      n_kv * kMinKv + n_tensors * kMinTensor > c.remaining()) {
    fail(fmt::format("{} metadata entries and {} tensors cannot fit in a {}-byte file", n_kv, n_tensors,
                     bytes.size()));
  }

  for (std::uint64_t i = 0; i < n_kv; ++i) {
    const std::string what = fmt::format("key of metadata entry #{}", i);
    std::string key = c.read_string(what);
    if (key.empty()) fail(fmt::format("metadata entry #{} has an empty key", i));
    const ValueType type = checked_value_type(c.read<std::uint32_t>("value type", key), key);
    Value value = read_value(c, type, key, 0);
    if (!f.key_index.emplace(key, f.metadata.size()).second) fail(fmt::format("duplicate key '{}'", key));
    f.metadata.emplace_back(std::move(key), std::move(value));
  }

  if (const Value* a = f.find("general.alignment")) {
    const std::int64_t v = a->is_integer() ? a->as_int("general.alignment") : 0;
    if (v <= 0 || v > (std::int64_t{1} << 30) || !std::has_single_bit(static_cast<std::uint64_t>(v))) {
      fail("general.alignment must be a power of two between 1 and 2^30");
    }
    f.alignment = static_cast<std::uint64_t>(v);
  }

  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.read_string(fmt::format("name of tensor #{}", i));
    const auto n_dims = c.read<std::uint32_t>("dimension count of tensor", t.name);
    if (n_dims > kMaxDims)
      fail(fmt::format("tensor '{}' has {} dimensions (at most {})", t.name, n_dims, kMaxDims));
    t.ne.resize(n_dims);
    std::uint64_t n = 1;
    bool overflow = false;
    for (std::uint32_t d = 0; d < n_dims; ++d) {
      const auto v = c.read<std::uint64_t>("dimension of tensor", t.name);
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) overflow = true;
      t.ne[d] = static_cast<std::int64_t>(v);
      if (v != 0 && n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) / v)
        overflow = true;
      n *= v;
    }
    if (overflow) {
      std::vector<std::uint64_t> shown(t.ne.begin(), t.ne.end());
      fail(fmt::format("tensor '{}' shape [{}] has an element count that overflows", t.name,
                       fmt::join(shown, ", ")));
    }
    t.n_elements = n;
    t.type_id = c.read<std::uint32_t>("type of tensor", t.name);
    const TypeTraits* tr = type_traits(t.type_id);
    if (tr == nullptr) {
      throw Error(ErrorCode::kUnsupported,
                  fmt::format("gguf: tensor '{}' has unknown type id {}", t.name, t.type_id));
    }
    const auto block = static_cast<std::uint64_t>(tr->block_elems);
    const std::uint64_t row = n_dims > 0 ? static_cast<std::uint64_t>(t.ne[0]) : 1;
    if (row % block != 0) {
      fail(fmt::format("tensor '{}' of type {}: row length {} is not a multiple of the block size {}", t.name,
                       tr->name, row, block));
    }
    const std::uint64_t blocks = n / block;
    const auto block_bytes = static_cast<std::uint64_t>(tr->block_bytes);
    if (blocks > std::numeric_limits<std::uint64_t>::max() / block_bytes) {
      fail(fmt::format("tensor '{}' of {} elements of type {} has a byte size that overflows", t.name, n,
                       tr->name));
    }
    t.n_bytes = blocks * block_bytes;
    t.offset = c.read<std::uint64_t>("data offset of tensor", t.name);
    if (t.offset % f.alignment != 0) {
      fail(fmt::format("tensor '{}' data offset {} is not a multiple of the alignment {}", t.name, t.offset,
                       f.alignment));
    }
    if (!f.tensor_index.emplace(t.name, f.tensors.size()).second) {
      fail(fmt::format("duplicate tensor name '{}'", t.name));
    }
    f.tensors.push_back(std::move(t));
  }

  const std::uint64_t pos = c.pos();
  f.data_offset = (pos + f.alignment - 1) / f.alignment * f.alignment;
  if (!f.tensors.empty() && f.data_offset > f.file_size) {
    fail(fmt::format("tensor data section would start at {}, past the end of the file (size {})",
                     f.data_offset, f.file_size));
  }
  const std::uint64_t data_size = f.file_size > f.data_offset ? f.file_size - f.data_offset : 0;
  for (const TensorInfo& t : f.tensors) {
    if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
      fail(fmt::format("tensor '{}' data [{}, {}) past end of file (size {})", t.name,
                       f.data_offset + t.offset,
                       // Shown as an exact sum where it fits, which it does for any real file.
                       t.n_bytes > std::numeric_limits<std::uint64_t>::max() - f.data_offset - t.offset
                           ? std::numeric_limits<std::uint64_t>::max()
                           : f.data_offset + t.offset + t.n_bytes,
                       f.file_size));
    }
  }
  // Tensors may be stored in any order but must not share bytes.
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(f.tensors.size());
  for (const TensorInfo& t : f.tensors) {
    if (t.n_bytes > 0) by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* prev = by_offset[i - 1];
    if (by_offset[i]->offset < prev->offset + prev->n_bytes) {
      fail(fmt::format("tensors '{}' and '{}' overlap in the data section", prev->name, by_offset[i]->name));
    }
  }
  return f;
}

std::span<const std::byte> tensor_data(const File& file, std::span<const std::byte> bytes,
                                       const TensorInfo& t) {
  if (bytes.size() != file.file_size) {
    throw Error(ErrorCode::kInvalidArgument,
                "gguf: tensor_data called with bytes other than the parsed image");
  }
  // parse() checked the range; recheck so a hand-built TensorInfo cannot read out of bounds.
  if (file.data_offset > bytes.size() || t.offset > bytes.size() - file.data_offset ||
      t.n_bytes > bytes.size() - file.data_offset - t.offset) {
    fail(fmt::format("tensor '{}' data lies outside the file (size {})", t.name, bytes.size()));
  }
  return bytes.subspan(static_cast<std::size_t>(file.data_offset + t.offset),
                       static_cast<std::size_t>(t.n_bytes));
}

std::vector<float> to_float(const File& file, std::span<const std::byte> bytes, const TensorInfo& t) {
  const detail::ElemType e = require_elem_type(t);
  const auto data = tensor_data(file, bytes, t);
  std::vector<float> out(static_cast<std::size_t>(t.n_elements));
  detail::dequantize(e, data, out);
  return out;
}

// ---- tokenizer -------------------------------------------------------------------------------------

TokenizerSpec tokenizer_spec(const File& file) {
  TokenizerSpec spec;
  const Value* model = file.find("tokenizer.ggml.model");
  if (model == nullptr) return spec;
  spec.model = model->as_string("tokenizer.ggml.model");
  if (const Value* v = file.find("tokenizer.ggml.pre")) spec.pre = v->as_string("tokenizer.ggml.pre");
  if (const Value* v = file.find("tokenizer.ggml.tokens")) {
    const Array& a = v->as_array("tokenizer.ggml.tokens");
    if (a.type != ValueType::kString) fail("tokenizer.ggml.tokens is not an array of strings");
    spec.tokens = a.strings;
  }
  if (const Value* v = file.find("tokenizer.ggml.token_type")) {
    const Array& a = v->as_array("tokenizer.ggml.token_type");
    if (a.size() != spec.tokens.size()) {
      fail(fmt::format("tokenizer.ggml.token_type has {} entries for {} tokens", a.size(),
                       spec.tokens.size()));
    }
    spec.token_types.resize(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      const std::int64_t t = a.int_at(i);
      if (t < std::numeric_limits<std::int32_t>::min() || t > std::numeric_limits<std::int32_t>::max()) {
        fail(fmt::format("tokenizer.ggml.token_type[{}] = {} out of range", i, t));
      }
      spec.token_types[i] = static_cast<std::int32_t>(t);
    }
  }
  if (const Value* v = file.find("tokenizer.ggml.merges")) {
    const Array& a = v->as_array("tokenizer.ggml.merges");
    if (a.type != ValueType::kString) fail("tokenizer.ggml.merges is not an array of strings");
    spec.merges = a.strings;
  }
  const auto n_tokens = static_cast<std::int64_t>(spec.tokens.size());
  const auto id = [&](const char* key, bool strict) -> std::int32_t {
    const Value* v = file.find(key);
    if (v == nullptr) return -1;
    const std::int64_t x = v->as_int(key);
    if (x >= 0 && x < n_tokens) return static_cast<std::int32_t>(x);
    // BOS/EOS drive generation, so a bad one is an error; pad/unk are informational and some
    // converters write placeholders for them.
    if (strict) fail(fmt::format("{} = {} is outside the vocabulary of {} tokens", key, x, n_tokens));
    return -1;
  };
  spec.bos = id("tokenizer.ggml.bos_token_id", true);
  spec.eos = id("tokenizer.ggml.eos_token_id", true);
  spec.unk = id("tokenizer.ggml.unknown_token_id", false);
  spec.pad = id("tokenizer.ggml.padding_token_id", false);
  if (const Value* v = file.find("tokenizer.ggml.add_bos_token")) spec.add_bos = v->as_bool("add_bos_token");
  if (const Value* v = file.find("tokenizer.chat_template")) {
    spec.chat_template = v->as_string("tokenizer.chat_template");
  }
  return spec;
}

// ---- Llama-family mapping --------------------------------------------------------------------------

namespace {

class Mapper {
 public:
  Mapper(const File& f, std::span<const std::byte> bytes, std::string arch)
      : f_(f), bytes_(bytes), arch_(std::move(arch)) {}

  [[nodiscard]] std::string key(std::string_view suffix) const { return fmt::format("{}.{}", arch_, suffix); }

  // A dimension: an integer, or a per-layer array whose entries all agree.
  [[nodiscard]] std::optional<int> dim(std::string_view suffix) const {
    const std::string k = key(suffix);
    const Value* v = f_.find(k);
    if (v == nullptr) return std::nullopt;
    std::int64_t x = 0;
    if (v->type() == ValueType::kArray) {
      const Array& a = v->as_array(k);
      if (a.size() == 0) fail(fmt::format("'{}' is an empty array", k));
      x = a.int_at(0);
      for (std::size_t i = 1; i < a.size(); ++i) {
        if (a.int_at(i) != x) {
          throw Error(ErrorCode::kUnsupported, fmt::format("gguf: '{}' differs between layers", k));
        }
      }
    } else {
      x = v->as_int(k);
    }
    if (x < 0 || x > std::numeric_limits<int>::max()) fail(fmt::format("'{}' = {} is out of range", k, x));
    return static_cast<int>(x);
  }

  [[nodiscard]] int required_dim(std::string_view suffix) const {
    const auto v = dim(suffix);
    if (!v) fail(fmt::format("missing key '{}'", key(suffix)));
    return *v;
  }

  [[nodiscard]] std::optional<double> real(std::string_view suffix) const {
    const std::string k = key(suffix);
    const Value* v = f_.find(k);
    if (v == nullptr) return std::nullopt;
    const double x = v->as_float(k);
    if (!std::isfinite(x)) fail(fmt::format("'{}' is not finite", k));
    return x;
  }

  [[nodiscard]] const TensorInfo& tensor(const std::string& name) {
    const TensorInfo* t = f_.find_tensor(name);
    if (t == nullptr) fail(fmt::format("missing tensor '{}'", name));
    used_.insert(name);
    return *t;
  }

  void expect_shape(const TensorInfo& t, std::initializer_list<std::int64_t> ne) const {
    if (!std::equal(t.ne.begin(), t.ne.end(), ne.begin(), ne.end())) {
      fail(fmt::format("tensor '{}' has shape [{}], expected [{}] (ggml order, innermost first)", t.name,
                       fmt::join(t.ne, ", "), fmt::join(ne, ", ")));
    }
  }

  // A linear layer stored as ne = [in, out], i.e. row-major [out, in] (Hugging Face orientation).
  // permute_heads > 0 undoes llama.cpp's interleaved-RoPE row permutation for that many heads.
  Matrix matrix(const std::string& name, std::int64_t out, std::int64_t in, int permute_heads = 0) {
    const TensorInfo& t = tensor(name);
    expect_shape(t, {in, out});
    const detail::ElemType e = require_elem_type(t);
    Matrix m(out, in);
    std::vector<std::int64_t> dst_row;
    if (permute_heads > 0) {
      // llama.cpp wrote HF row (h, j, i) of a head [2, head_dim/2] as row (h, i, j); put it back.
      const std::int64_t head_dim = out / permute_heads;
      const std::int64_t half = head_dim / 2;
      dst_row.resize(static_cast<std::size_t>(out));
      for (std::int64_t r = 0; r < out; ++r) {
        const std::int64_t h = r / head_dim, i = (r % head_dim) / 2, j = r % 2;
        dst_row[static_cast<std::size_t>(r)] = h * head_dim + j * half + i;
      }
    }
    // Decoded later, all tensors in one parallel region (run()); the buffer survives moves of m.
    jobs_.push_back({e, tensor_data(f_, bytes_, t), out, in, m.data, std::move(dst_row)});
    return m;
  }

  void run() const { detail::dequantize_rows(jobs_); }

  std::vector<float> vec(const std::string& name, std::int64_t n) {
    const TensorInfo& t = tensor(name);
    expect_shape(t, {n});
    return to_float(f_, bytes_, t);
  }

  [[nodiscard]] const std::set<std::string>& used() const noexcept { return used_; }

 private:
  const File& f_;
  std::span<const std::byte> bytes_;
  std::string arch_;
  std::set<std::string> used_;
  std::vector<detail::RowJob> jobs_;
};

// Llama 3 scaling as llama.cpp's converter bakes it into rope_freqs.weight: per frequency pair, the
// divisor of the rotation frequency.
double llama3_rope_factor(const RopeScaling& s, double theta, int head_dim, int i) {
  const double freq = 1.0 / std::pow(theta, 2.0 * i / head_dim);
  const double wavelen = 2.0 * std::numbers::pi / freq;
  const double low_wavelen = s.original_max_position / static_cast<double>(s.low_freq_factor);
  const double high_wavelen = s.original_max_position / static_cast<double>(s.high_freq_factor);
  if (wavelen < high_wavelen) return 1.0;
  if (wavelen > low_wavelen) return s.factor;
  const double smooth =
      (s.original_max_position / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return 1.0 / ((1.0 - smooth) / s.factor + smooth);
}

void read_rope_scaling(const File& f, std::span<const std::byte> bytes, Mapper& m, ModelConfig& cfg) {
  const Value* type = f.find(m.key("rope.scaling.type"));
  const std::optional<double> factor = m.real("rope.scaling.factor");
  const std::string kind = type ? type->as_string(m.key("rope.scaling.type")) : std::string();
  if (!kind.empty() && kind != "none" && kind != "linear") {
    throw Error(ErrorCode::kUnsupported, fmt::format("gguf: RoPE scaling type '{}' is not supported", kind));
  }
  if (kind != "none" && factor && *factor != 1.0) {
    throw Error(ErrorCode::kUnsupported,
                fmt::format("gguf: linear RoPE scaling (factor {}) is not supported", *factor));
  }
  if (const std::optional<double> old = m.real("rope.scale_linear"); old && *old != 1.0) {
    throw Error(ErrorCode::kUnsupported,
                fmt::format("gguf: linear RoPE scaling (factor {}) is not supported", *old));
  }

  // Llama 3.x GGUFs carry no scaling keys: the converter stores the per-frequency divisors as the
  // tensor rope_freqs.weight. Recognise the Llama 3 pattern (low 1, high 4, factor = largest
  // divisor) and refuse anything else rather than run with the wrong frequencies.
  const TensorInfo* t = f.find_tensor("rope_freqs.weight");
  if (t == nullptr) return;
  const TensorInfo& rt = m.tensor("rope_freqs.weight");
  const int half = cfg.head_dim / 2;
  m.expect_shape(rt, {half});
  const std::vector<float> got = to_float(f, bytes, *t);
  if (std::all_of(got.begin(), got.end(), [](float x) { return x == 1.0f; })) return;
  RopeScaling s;
  s.enabled = true;
  s.factor = *std::max_element(got.begin(), got.end());
  s.low_freq_factor = 1.0f;
  s.high_freq_factor = 4.0f;
  s.original_max_position = m.dim("rope.scaling.original_context_length").value_or(8192);
  bool match = std::isfinite(s.factor) && s.factor > 1.0f && s.original_max_position > 0;
  for (int i = 0; match && i < half; ++i) {
    const double want = llama3_rope_factor(s, cfg.rope_theta, cfg.head_dim, i);
    match = std::abs(want - got[static_cast<std::size_t>(i)]) <= 1e-3 * std::abs(want);
  }
  if (!match) {
    throw Error(ErrorCode::kUnsupported,
                "gguf: rope_freqs.weight does not match Llama-3 RoPE scaling (low 1, high 4); not supported");
  }
  cfg.rope_scaling = s;
}

}  // namespace

LoadedModel to_model(const File& file, std::span<const std::byte> bytes, std::string source) {
  if (bytes.size() != file.file_size) {
    throw Error(ErrorCode::kInvalidArgument, "gguf: to_model called with bytes other than the parsed image");
  }
  const Value* av = file.find("general.architecture");
  if (av == nullptr) fail("missing key 'general.architecture'");
  const std::string arch = av->as_string("general.architecture");
  if (arch != "llama" && arch != "mistral" && arch != "qwen2") {
    throw Error(ErrorCode::kUnsupported,
                fmt::format("gguf: architecture '{}' is not supported (llama, mistral, qwen2)", arch));
  }
  Mapper m(file, bytes, arch);
  LoadedModel out;
  out.source = std::move(source);
  ModelConfig& cfg = out.config;
  cfg.architecture = arch;
  if (const Value* v = file.find("general.name"); v && v->type() == ValueType::kString) {
    cfg.name = v->as_string();
  }
  cfg.n_layers = m.required_dim("block_count");
  cfg.hidden = m.required_dim("embedding_length");
  cfg.ffn = m.required_dim("feed_forward_length");
  cfg.n_heads = m.required_dim("attention.head_count");
  cfg.n_kv_heads = m.dim("attention.head_count_kv").value_or(cfg.n_heads);
  cfg.max_context = m.required_dim("context_length");
  if (const auto kl = m.dim("attention.key_length")) {
    cfg.head_dim = *kl;
  } else {
    if (cfg.n_heads <= 0 || cfg.hidden % cfg.n_heads != 0) {
      fail(fmt::format("embedding_length {} is not a multiple of head_count {}", cfg.hidden, cfg.n_heads));
    }
    cfg.head_dim = cfg.hidden / cfg.n_heads;
  }
  if (const auto vl = m.dim("attention.value_length"); vl && *vl != cfg.head_dim) {
    throw Error(ErrorCode::kUnsupported,
                fmt::format("gguf: value_length {} differs from key_length {}", *vl, cfg.head_dim));
  }
  if (const auto rd = m.dim("rope.dimension_count"); rd && *rd != cfg.head_dim) {
    throw Error(ErrorCode::kUnsupported,
                fmt::format("gguf: partial rotary embedding (rope.dimension_count {} of "
                            "head_dim {}) is not supported",
                            *rd, cfg.head_dim));
  }
  cfg.rope_theta = static_cast<float>(m.real("rope.freq_base").value_or(10000.0));
  const auto eps = m.real("attention.layer_norm_rms_epsilon");
  if (!eps) fail(fmt::format("missing key '{}'", m.key("attention.layer_norm_rms_epsilon")));
  cfg.rms_eps = static_cast<float>(*eps);

  const TensorInfo* embd = file.find_tensor("token_embd.weight");
  if (embd == nullptr) fail("missing tensor 'token_embd.weight'");
  if (const auto vs = m.dim("vocab_size")) {
    cfg.vocab = *vs;
  } else if (embd->ne.size() == 2 && embd->ne[1] <= std::numeric_limits<int>::max()) {
    cfg.vocab = static_cast<int>(embd->ne[1]);
  }
  out.tokenizer = tokenizer_spec(file);
  if (static_cast<std::int64_t>(out.tokenizer.tokens.size()) > cfg.vocab) {
    fail(fmt::format("tokenizer has {} tokens but the model's vocabulary is {}", out.tokenizer.tokens.size(),
                     cfg.vocab));
  }
  cfg.bos = out.tokenizer.bos;
  cfg.eos = out.tokenizer.eos;
  cfg.tied_embeddings = file.find_tensor("output.weight") == nullptr;
  validate(cfg);  // before any allocation sized by the config
  read_rope_scaling(file, bytes, m, cfg);
  validate(cfg);

  // Each layer has nine tensors; check the file could hold them before sizing anything by n_layers
  // (loosely, so that a single missing tensor is reported by name below).
  if (static_cast<std::uint64_t>(cfg.n_layers) * 9 > file.tensors.size()) {
    fail(fmt::format("{} layers need at least {} tensors, the file has {}", cfg.n_layers, cfg.n_layers * 9,
                     file.tensors.size()));
  }
  // llama.cpp permutes Q/K only for architectures it runs with interleaved-pair RoPE.
  const bool permuted = arch == "llama" || arch == "mistral";
  const std::int64_t hidden = cfg.hidden, ffn = cfg.ffn;
  ModelWeights& w = out.weights;
  w.token_embedding = m.matrix("token_embd.weight", cfg.vocab, hidden);
  w.layers.resize(static_cast<std::size_t>(cfg.n_layers));
  for (int l = 0; l < cfg.n_layers; ++l) {
    LayerWeights& L = w.layers[static_cast<std::size_t>(l)];
    const auto n = [l](const char* what) { return fmt::format("blk.{}.{}.weight", l, what); };
    L.attn_norm = m.vec(n("attn_norm"), hidden);
    L.wq = m.matrix(n("attn_q"), cfg.q_dim(), hidden, permuted ? cfg.n_heads : 0);
    L.wk = m.matrix(n("attn_k"), cfg.kv_dim(), hidden, permuted ? cfg.n_kv_heads : 0);
    L.wv = m.matrix(n("attn_v"), cfg.kv_dim(), hidden);
    L.wo = m.matrix(n("attn_output"), hidden, cfg.q_dim());
    L.ffn_norm = m.vec(n("ffn_norm"), hidden);
    L.w_gate = m.matrix(n("ffn_gate"), ffn, hidden);
    L.w_up = m.matrix(n("ffn_up"), ffn, hidden);
    L.w_down = m.matrix(n("ffn_down"), hidden, ffn);
  }
  w.output_norm = m.vec("output_norm.weight", hidden);
  if (!cfg.tied_embeddings) w.output = m.matrix("output.weight", cfg.vocab, hidden);

  // A tensor the mapping does not consume (a bias, an extra norm) would be silently dropped and
  // the model would compute something else; refuse instead.
  for (const TensorInfo& t : file.tensors) {
    if (!m.used().contains(t.name)) {
      throw Error(ErrorCode::kUnsupported,
                  fmt::format("gguf: tensor '{}' is not part of the Llama mapping (architecture '{}')",
                              t.name, arch));
    }
  }
  m.run();
  return out;
}

}  // namespace gguf
}  // namespace chunkwise
