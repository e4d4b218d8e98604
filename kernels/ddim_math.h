// The per-element DDIM (eta = 0) update, shared by the C++ loop and the CUDA kernel.
#pragma once

#include <cmath>

#include "common.h"

namespace edge_ad {

struct DdimCoefficients {
  float inv_sqrt_a_t;     // 1 / sqrt(abar_t)
  float sqrt_1m_a_t;      // sqrt(1 - abar_t)
  float sqrt_a_prev;      // sqrt(abar_prev)
  float sqrt_1m_a_prev;   // sqrt(1 - abar_prev)
  bool clamp;
  float clamp_value;
};

EA_HD float ddim_update(float x_t, float eps, const DdimCoefficients& c) {
  float x0 = (x_t - c.sqrt_1m_a_t * eps) * c.inv_sqrt_a_t;
  if (c.clamp) x0 = fminf(fmaxf(x0, -c.clamp_value), c.clamp_value);
  return c.sqrt_a_prev * x0 + c.sqrt_1m_a_prev * eps;
}

}  // namespace edge_ad
