// Argument checks shared by the CPU and CUDA entry points. Messages say what to change.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels.h"

namespace edge_ad {

AxisSpec make_axis(int in, int out, const HeatmapParams& p) {
  AxisSpec s{};
  s.in = in;
  s.out = out;
  s.align_corners = p.align_corners;
  s.smooth = p.smooth;
  s.sigma = p.sigma;
  s.radius = p.smooth == Smooth::kGaussian ? static_cast<int>(4.0 * p.sigma + 0.5) : 0;
  s.window = p.window;
  return s;
}

AxisSpec axis_y(const HeatmapParams& p) { return make_axis(p.in_h, p.out_h, p); }
AxisSpec axis_x(const HeatmapParams& p) { return make_axis(p.in_w, p.out_w, p); }

void validate(const HeatmapParams& p) {
  if (p.n < 1 || p.in_h < 1 || p.in_w < 1) {
    throw std::invalid_argument("heatmap: raw maps must be a non-empty N x h x w array, got N=" +
                                std::to_string(p.n) + ", h=" + std::to_string(p.in_h) +
                                ", w=" + std::to_string(p.in_w));
  }
  if (p.out_h < 1 || p.out_w < 1) {
    throw std::invalid_argument("heatmap: output_size must be two positive integers (H, W), got (" +
                                std::to_string(p.out_h) + ", " + std::to_string(p.out_w) + ")");
  }
  if (p.smooth == Smooth::kGaussian && !(std::isfinite(p.sigma) && p.sigma > 0.0)) {
    throw std::invalid_argument("heatmap: sigma must be a finite number > 0 for gaussian smoothing, "
                                "got " + std::to_string(p.sigma) + " (use smooth='none' to skip)");
  }
  if (p.smooth == Smooth::kBox && p.window < 1) {
    throw std::invalid_argument("heatmap: window must be a positive integer for box smoothing, got " +
                                std::to_string(p.window));
  }
  if (p.normalize && !(p.norm_max > p.norm_min)) {
    throw std::invalid_argument("heatmap: normalization needs norm_max > norm_min");
  }
  if (filter_taps(axis_y(p)) > kMaxTaps) {
    throw std::invalid_argument("heatmap: the smoothing filter has more than " +
                                std::to_string(kMaxTaps) + " taps; use sigma < 128 or window <= " +
                                std::to_string(kMaxTaps));
  }
}

void validate(const DdimParams& p) {
  const auto in_unit = [](double a) { return std::isfinite(a) && a > 0.0 && a <= 1.0; };
  if (!in_unit(p.alpha_bar_t) || !in_unit(p.alpha_bar_prev)) {
    throw std::invalid_argument("ddim_step: alpha_bar_t and alpha_bar_prev must lie in (0, 1], got " +
                                std::to_string(p.alpha_bar_t) + " and " +
                                std::to_string(p.alpha_bar_prev));
  }
  if (p.clamp && !(p.clamp_value > 0.f)) {
    throw std::invalid_argument("ddim_step: clamp must be > 0");
  }
}

}  // namespace edge_ad
