// The per-row math of the heatmap kernel, shared by the C++ loop and the CUDA kernel.
//
// Bilinear up-sampling and the smoothing filter are both linear and separable, so along one axis
// they compose into one banded matrix K = G * U (out x in). The full-size map of one image is then
// K_y * A * K_x^T: a small in_h x out_w intermediate T = A * K_x^T, and each output pixel is a short
// dot product of a column of T with one row of K_y. Every coefficient below is what the unfused
// pipeline (torch-style bilinear, then a scipy.ndimage-style filter) multiplies together.
#pragma once

#include <cmath>

#include "common.h"

namespace edge_ad {

enum class Smooth : int { kNone = 0, kGaussian = 1, kBox = 2 };

// Widest coefficient band supported (low-res taps per output row). Validation rejects more.
constexpr int kMaxBand = 128;
// Longest smoothing filter supported (gaussian sigma < 128, box window <= 1025).
constexpr int kMaxTaps = 1025;

struct AxisSpec {
  int in;               // low-res length along the axis
  int out;              // full-size length along the axis
  bool align_corners;   // torch F.interpolate semantics
  Smooth smooth;
  double sigma;         // gaussian
  int radius;           // gaussian: int(4*sigma + 0.5)
  int window;           // box
};

// scipy.ndimage "reflect" (d c b a | a b c d | d c b a), valid for any offset.
EA_HD int reflect_index(int i, int n) {
  if (n == 1) return 0;
  const int period = 2 * n;
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - 1 - i;
}

// Source coordinate of output index dst, as torch's bilinear up-sampling computes it.
EA_HD void bilinear_taps(int dst, int in, int out, bool align_corners, int* i0, int* i1,
                         double* w0, double* w1) {
  double src;
  if (align_corners) {
    src = out > 1 ? dst * (static_cast<double>(in - 1) / (out - 1)) : 0.0;
  } else {
    src = (dst + 0.5) * (static_cast<double>(in) / out) - 0.5;
    if (src < 0.0) src = 0.0;
  }
  int lo = static_cast<int>(src);
  if (lo > in - 1) lo = in - 1;
  const double frac = src - lo;
  *i0 = lo;
  *i1 = lo < in - 1 ? lo + 1 : lo;
  *w1 = frac;
  *w0 = 1.0 - frac;
}

// Filter taps: offsets [first, last] around the output index and the weight of each.
EA_HD int filter_first(const AxisSpec& s) {
  if (s.smooth == Smooth::kGaussian) return -s.radius;
  if (s.smooth == Smooth::kBox) return -(s.window / 2);
  return 0;
}

EA_HD int filter_last(const AxisSpec& s) {
  if (s.smooth == Smooth::kGaussian) return s.radius;
  if (s.smooth == Smooth::kBox) return s.window - 1 - s.window / 2;
  return 0;
}

EA_HD int filter_taps(const AxisSpec& s) { return filter_last(s) - filter_first(s) + 1; }

// Weight of filter offset t (first <= t <= last); gaussian weights are divided by their sum.
EA_HD double filter_weight(const AxisSpec& s, int offset, double gauss_norm) {
  if (s.smooth == Smooth::kGaussian) {
    return exp(-0.5 * offset * offset / (s.sigma * s.sigma)) / gauss_norm;
  }
  if (s.smooth == Smooth::kBox) return 1.0 / s.window;
  return 1.0;
}

EA_HD double gaussian_norm(const AxisSpec& s) {
  if (s.smooth != Smooth::kGaussian) return 1.0;
  double total = 0.0;
  for (int t = -s.radius; t <= s.radius; ++t) total += exp(-0.5 * t * t / (s.sigma * s.sigma));
  return total;
}

// Lowest and highest low-res index that output row `dst` draws from.
EA_HD void row_span(const AxisSpec& s, int dst, int* lo, int* hi) {
  int a = s.in, b = -1;
  for (int t = filter_first(s); t <= filter_last(s); ++t) {
    const int mid = reflect_index(dst + t, s.out);
    int i0, i1;
    double w0, w1;
    bilinear_taps(mid, s.in, s.out, s.align_corners, &i0, &i1, &w0, &w1);
    a = i0 < a ? i0 : a;
    b = i1 > b ? i1 : b;
  }
  *lo = a;
  *hi = b;
}

// Coefficients of output row `dst`: weights[k] multiplies low-res index lo + k, k < band.
// `taps[j]` is filter_weight(first + j); `weights` holds `band` >= hi - lo + 1 entries.
EA_HD void row_coefficients(const AxisSpec& s, int dst, int lo, int band, const double* taps,
                            float* weights) {
  double acc[kMaxBand];
  const int n = band < kMaxBand ? band : kMaxBand;
  for (int k = 0; k < n; ++k) acc[k] = 0.0;
  for (int t = filter_first(s); t <= filter_last(s); ++t) {
    const int mid = reflect_index(dst + t, s.out);
    const double g = taps[t - filter_first(s)];
    int i0, i1;
    double w0, w1;
    bilinear_taps(mid, s.in, s.out, s.align_corners, &i0, &i1, &w0, &w1);
    acc[i0 - lo] += g * w0;
    acc[i1 - lo] += g * w1;
  }
  for (int k = 0; k < n; ++k) weights[k] = static_cast<float>(acc[k]);
}

// Largest band over all output rows of an axis (the padded width of the coefficient table).
inline int max_band(const AxisSpec& s) {
  int band = 1;
  for (int d = 0; d < s.out; ++d) {
    int lo, hi;
    row_span(s, d, &lo, &hi);
    band = hi - lo + 1 > band ? hi - lo + 1 : band;
  }
  return band;
}

}  // namespace edge_ad
