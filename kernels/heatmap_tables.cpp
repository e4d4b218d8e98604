// Building and caching the per-axis coefficient tables of the heatmap kernel.
#include "heatmap_tables.h"

#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

namespace edge_ad {
namespace {

bool same_axis(const AxisSpec& a, const AxisSpec& b) {
  return a.in == b.in && a.out == b.out && a.align_corners == b.align_corners &&
         a.smooth == b.smooth && a.sigma == b.sigma && a.radius == b.radius && a.window == b.window;
}

std::shared_ptr<const AxisTable> build(const AxisSpec& s) {
  auto t = std::make_shared<AxisTable>();
  t->band = max_band(s);
  if (t->band > kMaxBand) {
    throw std::invalid_argument(
        "heatmap: the smoothing filter spans " + std::to_string(t->band) +
        " low-res pixels per output pixel; at most " + std::to_string(kMaxBand) +
        " are supported. Use a smaller sigma/window or a larger up-sampling factor.");
  }
  const std::vector<double> taps = filter_tap_weights(s);
  t->lo.resize(s.out);
  t->w.assign(static_cast<size_t>(s.out) * t->band, 0.f);
  for (int d = 0; d < s.out; ++d) {
    int lo, hi;
    row_span(s, d, &lo, &hi);
    lo = clamp_window_start(lo, t->band, s.in);
    t->lo[d] = lo;
    row_coefficients(s, d, lo, t->band, taps.data(), &t->w[static_cast<size_t>(d) * t->band]);
  }
  return t;
}

}  // namespace

std::vector<double> filter_tap_weights(const AxisSpec& s) {
  const double norm = gaussian_norm(s);
  std::vector<double> taps(filter_taps(s));
  for (int t = filter_first(s); t <= filter_last(s); ++t) {
    taps[t - filter_first(s)] = filter_weight(s, t, norm);
  }
  return taps;
}

std::shared_ptr<const AxisTable> axis_table(const AxisSpec& s) {
  static std::mutex mutex;
  static std::vector<std::pair<AxisSpec, std::shared_ptr<const AxisTable>>> cache;
  constexpr size_t kCapacity = 16;
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (const auto& entry : cache) {
      if (same_axis(entry.first, s)) return entry.second;
    }
  }
  auto table = build(s);  // outside the lock: may throw, may take a millisecond
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() >= kCapacity) cache.erase(cache.begin());
  cache.emplace_back(s, table);
  return table;
}

}  // namespace edge_ad
