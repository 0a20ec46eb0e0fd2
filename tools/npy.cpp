#include "npy.hpp"

#include <fstream>
#include <string>

#include "chunkwise/core/error.hpp"

namespace chunkwise::cli {

void write_npy(const std::filesystem::path& file, std::span<const float> data, std::int64_t rows,
               std::int64_t cols) {
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                       std::to_string(cols) + "), }";
  // Magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(file, std::ios::binary);
  check(static_cast<bool>(out), ErrorCode::kIo, "cannot write '" + file.string() + "'");
  out.write("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<std::uint16_t>(header.size());
  const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  out.write(len_le, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size_bytes()));
  check(static_cast<bool>(out), ErrorCode::kIo, "short write to '" + file.string() + "'");
}

}  // namespace chunkwise::cli
