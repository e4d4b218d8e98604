// CUDA heatmap: the same banded separable algorithm as heatmap_cpu.cpp. The coefficient tables are
// the host's (heatmap_tables.cpp), uploaded once per shape and device; a call made while its stream
// is captured into a CUDA graph before any uncaptured call of that shape builds them on the device
// into its workspace instead (heatmap_math.h), so a capture never copies from the host.
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda_check.h"
#include "heatmap_tables.h"
#include "kernels.h"

namespace edge_ad {
namespace {

constexpr int kThreads = 256;

size_t align_up(size_t x) { return (x + 255) & ~static_cast<size_t>(255); }

struct Workspace {
  int* lo_y;
  int* lo_x;
  float* w_y;
  float* w_x;
  float* t;             // N x in_h x out_w
  unsigned* score_bits; // N, order-preserving encoding of float
  size_t bytes;
};

Workspace carve(void* base, const HeatmapParams& p, int band_y, int band_x) {
  Workspace w{};
  auto* b = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* ptr = b == nullptr ? nullptr : b + off;
    off += align_up(bytes);
    return ptr;
  };
  w.lo_y = reinterpret_cast<int*>(take(sizeof(int) * p.out_h));
  w.lo_x = reinterpret_cast<int*>(take(sizeof(int) * p.out_w));
  w.w_y = reinterpret_cast<float*>(take(sizeof(float) * p.out_h * band_y));
  w.w_x = reinterpret_cast<float*>(take(sizeof(float) * p.out_w * band_x));
  w.t = reinterpret_cast<float*>(take(sizeof(float) * static_cast<size_t>(p.n) * p.in_h * p.out_w));
  w.score_bits = reinterpret_cast<unsigned*>(take(sizeof(unsigned) * p.n));
  w.bytes = off;
  return w;
}

// Monotone float <-> uint mapping so atomicMax on unsigned gives the float maximum.
__device__ __forceinline__ unsigned encode_ordered(float f) {
  const unsigned b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float decode_ordered(unsigned e) {
  return __uint_as_float((e & 0x80000000u) ? (e & 0x7FFFFFFFu) : ~e);
}

template <typename T> __device__ __forceinline__ float load(const T* p, size_t i);
template <> __device__ __forceinline__ float load<float>(const float* p, size_t i) { return p[i]; }
template <> __device__ __forceinline__ float load<__half>(const __half* p, size_t i) {
  return __half2float(p[i]);
}

// grid: (ceil(max(out_h, out_w) / 128), 2): blockIdx.y picks the axis. The filter taps are computed
// once per block into shared memory, then each thread builds one output row of the table.
__global__ void coefficients_kernel(AxisSpec ay, AxisSpec ax, int band_y, int band_x, Workspace ws) {
  __shared__ double taps[kMaxTaps];
  const bool is_y = blockIdx.y == 0;
  const AxisSpec s = is_y ? ay : ax;
  const int n_taps = filter_taps(s);
  const double norm = gaussian_norm(s);
  for (int j = threadIdx.x; j < n_taps; j += blockDim.x) {
    taps[j] = filter_weight(s, filter_first(s) + j, norm);
  }
  __syncthreads();
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= s.out) return;
  const int band = is_y ? band_y : band_x;
  int lo, hi;
  row_span(s, row, &lo, &hi);
  lo = clamp_window_start(lo, band, s.in);
  (is_y ? ws.lo_y : ws.lo_x)[row] = lo;
  row_coefficients(s, row, lo, band, taps, (is_y ? ws.w_y : ws.w_x) + static_cast<size_t>(row) * band);
}

// grid: (ceil(out_w / kThreads), min(n * in_h, 65535)); blockIdx.y strides over the N x in_h rows, so
// no thread divides a 64-bit index.
template <typename T>
__global__ void horizontal_kernel(const T* raw, HeatmapParams p, int band_x, Workspace ws) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= p.out_w) return;
  const int rows = p.n * p.in_h;
  const int lo = ws.lo_x[x];
  const float* w = ws.w_x + static_cast<size_t>(x) * band_x;
  for (int ni = blockIdx.y; ni < rows; ni += gridDim.y) {
    const size_t base = static_cast<size_t>(ni) * p.in_w + lo;
    float acc = 0.f;
    for (int k = 0; k < band_x; ++k) acc += w[k] * load(raw, base + k);
    ws.t[static_cast<size_t>(ni) * p.out_w + x] = acc;
  }
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_down_sync(0xFFFFFFFFu, v, off));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < (blockDim.x >> 5) ? partial[lane] : -INFINITY;
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_down_sync(0xFFFFFFFFu, v, off));
  }
  return v;
}

__device__ __forceinline__ float normalize_value(float v, const HeatmapParams& p) {
  if (!p.normalize) return v;
  return fminf(1.f, fmaxf(0.f, (v - p.norm_min) / (p.norm_max - p.norm_min)));
}

// grid: (ceil(out_w / kThreads), ceil(out_h / kRowsPerBlock), n). Each thread writes one column of
// kRowsPerBlock output rows; one block maximum and one atomic per block (not per row) for the score.
constexpr int kRowsPerBlock = 8;

__global__ void vertical_kernel(HeatmapParams p, int band_y, Workspace ws, float* maps,
                                uint8_t* masks) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x;
  const int n = blockIdx.z;
  const int y_end = min(p.out_h, (blockIdx.y + 1) * kRowsPerBlock);
  float best = -INFINITY;
  if (x < p.out_w) {
    for (int y = blockIdx.y * kRowsPerBlock; y < y_end; ++y) {
      const float* t = ws.t + (static_cast<size_t>(n) * p.in_h + ws.lo_y[y]) * p.out_w + x;
      const float* w = ws.w_y + static_cast<size_t>(y) * band_y;
      float acc = 0.f;
      for (int k = 0; k < band_y; ++k) acc += w[k] * t[static_cast<size_t>(k) * p.out_w];
      const float v = normalize_value(acc, p);
      const size_t o = (static_cast<size_t>(n) * p.out_h + y) * p.out_w + x;
      if (maps != nullptr) maps[o] = v;  // nullptr: scores only, nothing full-size is written
      if (masks != nullptr) masks[o] = v >= p.threshold ? 1 : 0;
      best = fmaxf(best, v);
    }
  }
  if (!p.score_from_raw) {
    const float m = block_max(best);
    if (threadIdx.x == 0) atomicMax(&ws.score_bits[n], encode_ordered(m));
  }
}

template <typename T>
__global__ void raw_max_kernel(const T* raw, HeatmapParams p, Workspace ws) {
  const size_t per_image = static_cast<size_t>(p.in_h) * p.in_w;
  const int n = blockIdx.y;
  float v = -INFINITY;
  for (size_t i = blockIdx.x * blockDim.x + threadIdx.x; i < per_image; i += gridDim.x * blockDim.x) {
    v = fmaxf(v, load(raw, n * per_image + i));
  }
  const float m = block_max(v);
  if (threadIdx.x == 0) atomicMax(&ws.score_bits[n], encode_ordered(m));
}

__global__ void finalize_scores_kernel(HeatmapParams p, Workspace ws, float* scores) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= p.n) return;
  const float m = decode_ordered(ws.score_bits[n]);
  scores[n] = p.score_from_raw ? normalize_value(m, p) : m;
}

// Device copies of the host tables (heatmap_tables.cpp), one per axis shape and device, built once
// outside any stream capture and kept for the life of the process (a line runs a few shapes).
struct DeviceAxis {
  int device;
  std::shared_ptr<const AxisTable> table;  // pins the host table, so its address identifies it
  int* lo;
  float* w;
};

bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cuda_check(cudaStreamIsCapturing(stream, &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

// The cached device table of `table`, uploading it on first use; nullptr while `stream` is being
// captured (uploads are not capturable) or when the cache is full: the caller then builds the
// coefficients on the device into its workspace instead.
const DeviceAxis* device_axis(const std::shared_ptr<const AxisTable>& table, cudaStream_t stream) {
  static std::mutex mutex;
  static std::vector<DeviceAxis> cache;
  constexpr size_t kCapacity = 64;
  int device = 0;
  cuda_check(cudaGetDevice(&device), "cudaGetDevice");
  std::lock_guard<std::mutex> lock(mutex);
  for (const auto& entry : cache) {
    if (entry.device == device && entry.table == table) return &entry;
  }
  if (cache.size() >= kCapacity || capturing(stream)) return nullptr;
  DeviceAxis d{device, table, nullptr, nullptr};
  cuda_check(cudaMalloc(&d.lo, sizeof(int) * table->lo.size()), "cudaMalloc (heatmap table)");
  cuda_check(cudaMalloc(&d.w, sizeof(float) * table->w.size()), "cudaMalloc (heatmap table)");
  cuda_check(cudaMemcpyAsync(d.lo, table->lo.data(), sizeof(int) * table->lo.size(), cudaMemcpyHostToDevice,
                             stream), "cudaMemcpyAsync (heatmap table)");
  cuda_check(cudaMemcpyAsync(d.w, table->w.data(), sizeof(float) * table->w.size(), cudaMemcpyHostToDevice,
                             stream), "cudaMemcpyAsync (heatmap table)");
  cache.reserve(kCapacity);  // entries never move: callers keep pointers to them
  cache.push_back(d);
  return &cache.back();
}

template <typename T>
void launch_all(const T* raw, const HeatmapParams& p, int band_y, int band_x, Workspace ws,
                const DeviceAxis* dy, const DeviceAxis* dx, float* maps, float* scores, uint8_t* masks,
                cudaStream_t stream) {
  cuda_check(cudaMemsetAsync(ws.score_bits, 0, sizeof(unsigned) * p.n, stream), "cudaMemsetAsync");
  // Scores taken from the raw map, and neither maps nor masks wanted: the full-size passes are skipped.
  const bool full_size = maps != nullptr || masks != nullptr || !p.score_from_raw;
  if (full_size && dy != nullptr && dx != nullptr) {
    ws.lo_y = dy->lo, ws.w_y = dy->w, ws.lo_x = dx->lo, ws.w_x = dx->w;
  } else if (full_size) {
    const AxisSpec ay = axis_y(p), ax = axis_x(p);
    const int rows = std::max(p.out_h, p.out_w);
    coefficients_kernel<<<dim3((rows + 127) / 128, 2), 128, 0, stream>>>(ay, ax, band_y, band_x, ws);
    check_launch("heatmap coefficients");
  }
  if (full_size) {
    const int t_rows = p.n * p.in_h;
    const dim3 h_grid((p.out_w + kThreads - 1) / kThreads, std::min(t_rows, 65535));
    horizontal_kernel<T><<<h_grid, kThreads, 0, stream>>>(raw, p, band_x, ws);
    check_launch("heatmap horizontal pass");
    const dim3 grid((p.out_w + kThreads - 1) / kThreads, (p.out_h + kRowsPerBlock - 1) / kRowsPerBlock,
                    p.n);
    vertical_kernel<<<grid, kThreads, 0, stream>>>(p, band_y, ws, maps, masks);
    check_launch("heatmap vertical pass");
  }
  if (p.score_from_raw) {
    const size_t per_image = static_cast<size_t>(p.in_h) * p.in_w;
    const unsigned blocks = static_cast<unsigned>(std::min<size_t>((per_image + kThreads - 1) / kThreads, 64));
    raw_max_kernel<T><<<dim3(blocks, p.n), kThreads, 0, stream>>>(raw, p, ws);
    check_launch("heatmap raw max");
  }
  finalize_scores_kernel<<<(p.n + 127) / 128, 128, 0, stream>>>(p, ws, scores);
  check_launch("heatmap scores");
}

}  // namespace

size_t heatmap_cuda_workspace_bytes(const HeatmapParams& p) {
  validate(p);
  return carve(nullptr, p, axis_table(axis_y(p))->band, axis_table(axis_x(p))->band).bytes;
}

void heatmap_cuda(const void* raw, DType dtype, const HeatmapParams& p, float* maps, float* scores,
                  uint8_t* masks, void* workspace, size_t workspace_bytes, uintptr_t stream) {
  validate(p);
  // The host tables (cached) give the band widths, and their device copies the coefficients.
  const auto table_y = axis_table(axis_y(p)), table_x = axis_table(axis_x(p));
  const int band_y = table_y->band, band_x = table_x->band;
  const Workspace ws = carve(workspace, p, band_y, band_x);
  if (workspace == nullptr || workspace_bytes < ws.bytes) {
    throw std::invalid_argument("heatmap_cuda: workspace too small: need " + std::to_string(ws.bytes) +
                                " bytes (heatmap_cuda_workspace_bytes), got " +
                                std::to_string(workspace_bytes));
  }
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const DeviceAxis* dy = device_axis(table_y, s);
  const DeviceAxis* dx = dy == nullptr ? nullptr : device_axis(table_x, s);
  if (dtype == DType::kFloat32) {
    launch_all(static_cast<const float*>(raw), p, band_y, band_x, ws, dy, dx, maps, scores, masks, s);
  } else {
    launch_all(static_cast<const __half*>(raw), p, band_y, band_x, ws, dy, dx, maps, scores, masks, s);
  }
}

}  // namespace edge_ad
