// CUDA device facts and CUDA-graph capture on a caller's stream, for the runtimes' engine caches and
// for capturing TensorRT's enqueue together with the heatmap/DDIM kernels in one graph. The stream
// can come from any library (pycuda, torch, cuda-python): a cudaStream_t is what they all hand out.
#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "cuda_check.h"
#include "kernels.h"

namespace edge_ad {

std::pair<int, int> cuda_device_capability(int device) {
  int major = 0, minor = 0;
  cuda_check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device),
             "cudaDeviceGetAttribute(major)");
  cuda_check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device),
             "cudaDeviceGetAttribute(minor)");
  return {major, minor};
}

void cuda_graph_begin_capture(uintptr_t stream) {
  // Thread-local: camera threads may allocate meanwhile without invalidating this capture.
  cuda_check(cudaStreamBeginCapture(reinterpret_cast<cudaStream_t>(stream),
                                    cudaStreamCaptureModeThreadLocal),
             "cudaStreamBeginCapture (the default stream cannot be captured: pass another)");
}

uintptr_t cuda_graph_end_capture(uintptr_t stream) {
  // A failed capture leaves a sticky "last error" behind; it is cleared before throwing so the caller's
  // fallback (plain launches) does not find it in its first launch check. Unverified on a GPU.
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(reinterpret_cast<cudaStream_t>(stream), &graph);
  if (ended != cudaSuccess) {
    cudaGetLastError();
    cuda_check(ended, "cudaStreamEndCapture");
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    cudaGetLastError();
    cuda_check(err, "cudaGraphInstantiate");
  }
  return reinterpret_cast<uintptr_t>(exec);
}

void cuda_graph_launch(uintptr_t exec, uintptr_t stream) {
  cuda_check(cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>(exec),
                             reinterpret_cast<cudaStream_t>(stream)),
             "cudaGraphLaunch");
}

void cuda_graph_destroy(uintptr_t exec) {
  cuda_check(cudaGraphExecDestroy(reinterpret_cast<cudaGraphExec_t>(exec)), "cudaGraphExecDestroy");
}

void cuda_memcpy_async(uintptr_t dst, uintptr_t src, std::size_t nbytes, bool to_device, uintptr_t stream) {
  cuda_check(cudaMemcpyAsync(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), nbytes,
                             to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                             reinterpret_cast<cudaStream_t>(stream)),
             "cudaMemcpyAsync");
}

void cuda_stream_synchronize(uintptr_t stream) {
  cuda_check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

}  // namespace edge_ad
