#include "kernels/cpu/row_math.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vector_math.hpp"

namespace mixq::cpu {

MIXQ_CLONES void exp_inplace(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = fast_exp(x[i]);
}

MIXQ_CLONES double log_sum_exp(const float* x, int64_t n) {
  // Summed in double: the loss it gives is differentiated numerically in the tests, where a float
  // sum's rounding (~1e-7) would show.
  const float m = lane_max(x, n);
  double acc[reduce_lanes] = {};
  int64_t i = 0;
  for (; i + reduce_lanes <= n; i += reduce_lanes)
    for (int64_t l = 0; l < reduce_lanes; ++l) acc[l] += double(fast_exp(x[i + l] - m));
  for (int64_t l = 0; i + l < n; ++l) acc[l] += double(fast_exp(x[i + l] - m));
  double sum = 0.0;
  for (int64_t l = 0; l < reduce_lanes; ++l) sum += acc[l];
  return double(m) + std::log(sum);
}

MIXQ_CLONES void exp_shift_scale(float* out, const float* x, int64_t n, double shift, float scale) {
  for (int64_t i = 0; i < n; ++i) out[i] = fast_exp(float(double(x[i]) - shift)) * scale;
}

MIXQ_CLONES void swiglu(float* out, const float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g * fast_sigmoid(g) * up[i];
  }
}

MIXQ_CLONES void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                                 int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float sig = fast_sigmoid(g);
    const float silu = g * sig;
    dup[i] = dout[i] * silu;
    dgate[i] = dout[i] * up[i] * sig * (1.0f + g * (1.0f - sig));  // silu'(g) = sig (1 + g (1 - sig))
  }
}

}  // namespace mixq::cpu
