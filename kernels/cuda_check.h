// Error checking for CUDA runtime calls and kernel launches: every failure becomes an exception.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace edge_ad {

inline void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(err));
  }
}

// After a launch: configuration errors are reported at once, execution errors at the next sync.
inline void check_launch(const char* kernel) { cuda_check(cudaGetLastError(), kernel); }

}  // namespace edge_ad
