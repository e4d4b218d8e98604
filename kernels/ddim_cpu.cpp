// CPU DDIM step: the element-wise update of ddim_math.h over a whole latent, fp32 or fp16.
#include <cmath>

#include "ddim_math.h"
#include "kernels.h"

namespace edge_ad {

DdimCoefficients ddim_coefficients(const DdimParams& p) {
  DdimCoefficients c{};
  c.inv_sqrt_a_t = static_cast<float>(1.0 / std::sqrt(p.alpha_bar_t));
  c.sqrt_1m_a_t = static_cast<float>(std::sqrt(1.0 - p.alpha_bar_t));
  c.sqrt_a_prev = static_cast<float>(std::sqrt(p.alpha_bar_prev));
  c.sqrt_1m_a_prev = static_cast<float>(std::sqrt(1.0 - p.alpha_bar_prev));
  c.clamp = p.clamp;
  c.clamp_value = p.clamp_value;
  return c;
}

void ddim_step_cpu(const void* x_t, const void* eps, void* x_prev, int64_t count, DType dtype,
                   const DdimParams& p) {
  validate(p);
  const DdimCoefficients c = ddim_coefficients(p);
  if (dtype == DType::kFloat32) {
    const auto* x = static_cast<const float*>(x_t);
    const auto* e = static_cast<const float*>(eps);
    auto* out = static_cast<float*>(x_prev);
#pragma omp parallel for schedule(static) if (count >= (1 << 18))
    for (int64_t i = 0; i < count; ++i) out[i] = ddim_update(x[i], e[i], c);
  } else {
    const auto* x = static_cast<const uint16_t*>(x_t);
    const auto* e = static_cast<const uint16_t*>(eps);
    auto* out = static_cast<uint16_t*>(x_prev);
#pragma omp parallel for schedule(static) if (count >= (1 << 18))
    for (int64_t i = 0; i < count; ++i) {
      out[i] = float_to_half_bits(ddim_update(half_bits_to_float(x[i]), half_bits_to_float(e[i]), c));
    }
  }
}

}  // namespace edge_ad
