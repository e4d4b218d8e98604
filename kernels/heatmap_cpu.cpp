// CPU heatmap: banded separable up-sample + smoothing, then per-pixel normalize / max / threshold,
// all written in one pass over the full-size map. This is the reference for the CUDA version.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "heatmap_tables.h"
#include "kernels.h"

namespace edge_ad {
namespace {

void load_as_float(const void* raw, DType dtype, size_t offset, size_t count, float* dst) {
  if (dtype == DType::kFloat32) {
    std::copy_n(static_cast<const float*>(raw) + offset, count, dst);
  } else {
    const auto* src = static_cast<const uint16_t*>(raw) + offset;
    for (size_t i = 0; i < count; ++i) dst[i] = half_bits_to_float(src[i]);
  }
}

// T = A * Kx^T for one image: in_h x out_w.
void horizontal_pass(const float* a, int in_h, int in_w, const AxisTable& tx, int out_w, float* t) {
  for (int i = 0; i < in_h; ++i) {
    const float* row = a + static_cast<size_t>(i) * in_w;
    float* dst = t + static_cast<size_t>(i) * out_w;
    for (int x = 0; x < out_w; ++x) {
      const float* w = &tx.w[static_cast<size_t>(x) * tx.band];
      const float* src = row + tx.lo[x];
      float acc = 0.f;
      for (int k = 0; k < tx.band; ++k) acc += w[k] * src[k];
      dst[x] = acc;
    }
  }
}

// One full-size row: out = sum_k Ky[y, k] * T[lo + k, :], then normalize, track max, threshold.
float vertical_row(const float* __restrict t, int out_w, const float* __restrict wy, int band,
                   const HeatmapParams& p, float* __restrict out, uint8_t* __restrict mask) {
  std::fill_n(out, out_w, 0.f);
  for (int k = 0; k < band; ++k) {
    const float wk = wy[k];
    const float* __restrict src = t + static_cast<size_t>(k) * out_w;
    for (int x = 0; x < out_w; ++x) out[x] += wk * src[x];
  }
  if (p.normalize) {
    const float scale = 1.f / (p.norm_max - p.norm_min);
    for (int x = 0; x < out_w; ++x) {
      out[x] = std::min(1.f, std::max(0.f, (out[x] - p.norm_min) * scale));
    }
  }
  float m = -std::numeric_limits<float>::infinity();
  for (int x = 0; x < out_w; ++x) m = std::max(m, out[x]);
  if (mask != nullptr) {
    for (int x = 0; x < out_w; ++x) mask[x] = out[x] >= p.threshold ? 1 : 0;
  }
  return m;
}

float normalized(float v, const HeatmapParams& p) {
  if (!p.normalize) return v;
  return std::min(1.f, std::max(0.f, (v - p.norm_min) / (p.norm_max - p.norm_min)));
}

}  // namespace

void heatmap_cpu(const void* raw, DType dtype, const HeatmapParams& p, float* maps, float* scores,
                 uint8_t* masks) {
  validate(p);
  const auto ty_ptr = axis_table(axis_y(p));
  const auto tx_ptr = axis_table(axis_x(p));
  const AxisTable& ty = *ty_ptr;
  const AxisTable& tx = *tx_ptr;
  const size_t in_size = static_cast<size_t>(p.in_h) * p.in_w;
  const size_t out_size = static_cast<size_t>(p.out_h) * p.out_w;
  const size_t t_size = static_cast<size_t>(p.in_h) * p.out_w;
  std::vector<float> a(in_size * p.n), t(t_size * p.n);
  std::vector<float> row_max(static_cast<size_t>(p.n) * p.out_h);
#ifdef _OPENMP
  const int threads = p.threads > 0 ? p.threads : omp_get_max_threads();
#else
  const int threads = 1;
#endif
  (void)threads;

#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && p.n > 1)
  for (int n = 0; n < p.n; ++n) {
    load_as_float(raw, dtype, n * in_size, in_size, &a[n * in_size]);
    horizontal_pass(&a[n * in_size], p.in_h, p.in_w, tx, p.out_w, &t[n * t_size]);
  }

  const int rows = p.n * p.out_h;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && out_size * p.n >= (1u << 14))
  for (int r = 0; r < rows; ++r) {
    const int n = r / p.out_h, y = r % p.out_h;
    const float* tn = &t[n * t_size] + static_cast<size_t>(ty.lo[y]) * p.out_w;
    uint8_t* mask = p.has_threshold ? masks + n * out_size + static_cast<size_t>(y) * p.out_w : nullptr;
    row_max[r] = vertical_row(tn, p.out_w, &ty.w[static_cast<size_t>(y) * ty.band], ty.band, p,
                              maps + n * out_size + static_cast<size_t>(y) * p.out_w, mask);
  }

  for (int n = 0; n < p.n; ++n) {
    float m = -std::numeric_limits<float>::infinity();
    if (p.score_from_raw) {
      for (size_t i = 0; i < in_size; ++i) m = std::max(m, a[n * in_size + i]);
      m = normalized(m, p);
    } else {
      for (int y = 0; y < p.out_h; ++y) m = std::max(m, row_max[static_cast<size_t>(n) * p.out_h + y]);
    }
    scores[n] = m;
  }
}

}  // namespace edge_ad
