// One C++ signature per kernel; a CPU implementation always, a CUDA one when built with CUDA.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "common.h"
#include "ddim_math.h"
#include "heatmap_math.h"

namespace edge_ad {

struct HeatmapParams {
  int n = 0, in_h = 0, in_w = 0;    // raw maps N x h x w
  int out_h = 0, out_w = 0;         // full-size output
  Smooth smooth = Smooth::kGaussian;
  double sigma = 4.0;               // gaussian
  int window = 0;                   // box
  bool align_corners = false;
  bool score_from_raw = false;      // image score: max of the raw map (else of the final map)
  bool normalize = false;           // y = (x - norm_min) / (norm_max - norm_min), clipped to [0, 1]
  float norm_min = 0.f, norm_max = 1.f;
  bool has_threshold = false;       // mask = final map >= threshold
  float threshold = 0.f;
  int threads = 0;                  // CPU: OpenMP threads (0 = OpenMP's default; 1 = none started)
};

// Throws std::invalid_argument with a message that says what to change.
void validate(const HeatmapParams& p);
AxisSpec axis_y(const HeatmapParams& p);
AxisSpec axis_x(const HeatmapParams& p);

// raw: N*h*w contiguous (fp32 or fp16); maps: N*H*W fp32; scores: N; masks: N*H*W uint8 or null.
void heatmap_cpu(const void* raw, DType dtype, const HeatmapParams& p, float* maps, float* scores,
                 uint8_t* masks);

struct DdimParams {
  double alpha_bar_t = 1.0;
  double alpha_bar_prev = 1.0;
  bool clamp = false;
  float clamp_value = 1.f;          // x0 clipped to [-clamp_value, clamp_value]
};

void validate(const DdimParams& p);
DdimCoefficients ddim_coefficients(const DdimParams& p);

// x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps,  x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t).
// x_prev may alias x_t (in place).
void ddim_step_cpu(const void* x_t, const void* eps, void* x_prev, int64_t count, DType dtype,
                   const DdimParams& p);

// Area-averaging downscale of uint8 images, pixel for pixel cv2.resize(..., INTER_AREA) (resize_cpu.cpp).
struct AreaResizeParams {
  int src_h = 0, src_w = 0;         // input H x W
  int dst_h = 0, dst_w = 0;         // output, 1 <= dst <= src on both axes
  int channels = 0;                 // interleaved: 1, 3 or 4
  bool avx2 = true;                 // x86-64: the AVX2 build when the CPU has it (false: baseline)
};

void validate(const AreaResizeParams& p);
// Rows are src_stride / dst_stride bytes apart (any sign); the pixels of a row are contiguous. One thread.
void resize_area_cpu(const uint8_t* src, int64_t src_stride, uint8_t* dst, int64_t dst_stride,
                     const AreaResizeParams& p);

#ifdef EDGE_AD_WITH_CUDA
std::size_t heatmap_cuda_workspace_bytes(const HeatmapParams& p);
// All pointers are device pointers; workspace holds heatmap_cuda_workspace_bytes(p) bytes.
// Asynchronous on `stream`; capturable in a CUDA graph (no allocation, no host copies).
void heatmap_cuda(const void* raw, DType dtype, const HeatmapParams& p, float* maps, float* scores,
                  uint8_t* masks, void* workspace, std::size_t workspace_bytes, uintptr_t stream);
void ddim_step_cuda(const void* x_t, const void* eps, void* x_prev, int64_t count, DType dtype,
                    const DdimParams& p, uintptr_t stream);
int cuda_device_count();
// Why no CUDA device can be used (the runtime's error, the driver's and the build's CUDA versions); "" when one can.
std::string cuda_init_error();
std::string cuda_device_name(int device);
void cuda_synchronize();
std::pair<int, int> cuda_device_capability(int device);
void cuda_graph_begin_capture(uintptr_t stream);
uintptr_t cuda_graph_end_capture(uintptr_t stream);   // returns an instantiated cudaGraphExec_t
void cuda_graph_launch(uintptr_t exec, uintptr_t stream);
void cuda_graph_destroy(uintptr_t exec);
void cuda_stream_synchronize(uintptr_t stream);
// Host <-> device copy on a stream (asynchronous when the host memory is pinned).
void cuda_memcpy_async(uintptr_t dst, uintptr_t src, std::size_t nbytes, bool to_device, uintptr_t stream);
#endif

}  // namespace edge_ad
