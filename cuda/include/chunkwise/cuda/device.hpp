// CUDA device discovery. The kernels arrive with the CUDA backend issue; this is the part the
// rest of the library needs now: whether a usable GPU is present.
#pragma once

#include <string>

namespace chunkwise::cuda {

struct DeviceInfo {
  int index = -1;
  std::string name;
  int compute_major = 0;
  int compute_minor = 0;
  std::size_t total_memory = 0;
};

// Number of CUDA devices the driver reports; 0 when there is no driver or no device.
int device_count() noexcept;
// Throws chunkwise::Error(kBackend) when the index is invalid.
DeviceInfo device_info(int index);

}  // namespace chunkwise::cuda
