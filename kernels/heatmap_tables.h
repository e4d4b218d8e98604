// Host-side banded per-axis coefficient tables of the heatmap kernel, cached by axis parameters:
// a stream calls the kernel with the same sizes every frame, so tables are built once.
#pragma once

#include <memory>
#include <vector>

#include "heatmap_math.h"

namespace edge_ad {

struct AxisTable {
  int band = 1;               // padded taps per output index
  std::vector<int> lo;        // first low-res index of each output index
  std::vector<float> w;       // out x band weights
};

// Shift a row's window down where it would run past the end, keeping every tap inside it.
EA_HD int clamp_window_start(int lo, int band, int in) { return lo + band > in ? in - band : lo; }

// filter_weight for every offset of the axis' filter, first to last.
std::vector<double> filter_tap_weights(const AxisSpec& s);

// The table of one axis; throws std::invalid_argument when the band exceeds kMaxBand.
// Thread-safe; returns a shared table from a small cache.
std::shared_ptr<const AxisTable> axis_table(const AxisSpec& s);

}  // namespace edge_ad
