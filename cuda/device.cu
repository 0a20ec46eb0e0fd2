#include <cuda_runtime.h>

#include "chunkwise/core/error.hpp"
#include "chunkwise/cuda/device.hpp"

namespace chunkwise::cuda {

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

DeviceInfo device_info(int index) {
  cudaDeviceProp prop{};
  const cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) {
    cudaGetLastError();  // keep the failure out of the next launch check
    throw Error(ErrorCode::kBackend, std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(err));
  }
  return DeviceInfo{index, prop.name, prop.major, prop.minor, prop.totalGlobalMem};
}

}  // namespace chunkwise::cuda
