// CUDA DDIM step: the element-wise update of ddim_math.h, grid-stride, fp32 or fp16 in and out.
#include <cuda_fp16.h>

#include <string>

#include "cuda_check.h"
#include "kernels.h"

namespace edge_ad {
namespace {

__global__ void ddim_kernel_f32(const float* x, const float* e, float* out, int64_t count,
                                DdimCoefficients c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = ddim_update(x[i], e[i], c);
  }
}

__global__ void ddim_kernel_f16(const __half* x, const __half* e, __half* out, int64_t count,
                                DdimCoefficients c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2half_rn(ddim_update(__half2float(x[i]), __half2float(e[i]), c));
  }
}

}  // namespace

void ddim_step_cuda(const void* x_t, const void* eps, void* x_prev, int64_t count, DType dtype,
                    const DdimParams& p, uintptr_t stream) {
  validate(p);
  if (count <= 0) throw std::invalid_argument("ddim_step: empty latent");
  const DdimCoefficients c = ddim_coefficients(p);
  const int threads = 256;
  const int blocks = static_cast<int>(std::min<int64_t>((count + threads - 1) / threads, 4096));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (dtype == DType::kFloat32) {
    ddim_kernel_f32<<<blocks, threads, 0, s>>>(static_cast<const float*>(x_t),
                                               static_cast<const float*>(eps),
                                               static_cast<float*>(x_prev), count, c);
  } else {
    ddim_kernel_f16<<<blocks, threads, 0, s>>>(static_cast<const __half*>(x_t),
                                               static_cast<const __half*>(eps),
                                               static_cast<__half*>(x_prev), count, c);
  }
  check_launch("ddim_step");
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return count;
}

std::string cuda_init_error() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess) return count > 0 ? "" : "cudaGetDeviceCount found no CUDA device";
  cudaGetLastError();
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  auto version = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err) + " (driver supports CUDA " +
         (driver ? version(driver) : std::string("none: no driver loaded")) + ", edge_ad built with CUDA " +
         version(runtime) + ")";
}

std::string cuda_device_name(int device) {
  cudaDeviceProp prop{};
  cuda_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  return prop.name;
}

void cuda_synchronize() { cuda_check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

}  // namespace edge_ad
