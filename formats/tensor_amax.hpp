// Reductions every quantizer starts from.
#pragma once

#include <cmath>
#include <vector>

#include "formats/weight_view.hpp"

namespace mixq {

// max |w| over the tensor (NaN-free input assumed: see check_finite).
inline float tensor_amax(const weight_view& w) {
  float m = 0.0f;
  for (int64_t i = 0; i < w.size(); ++i) m = std::fmax(m, std::fabs(w.data[i]));
  return m;
}

inline float row_amax(const weight_view& w, int64_t r) {
  float m = 0.0f;
  for (int64_t c = 0; c < w.cols; ++c) m = std::fmax(m, std::fabs(w.row(r)[c]));
  return m;
}

// Applies the NaN / Inf policy: returns w itself when it is all finite, else (policy `zero`) a view
// of `storage`, a copy with the non-finite values zeroed. `reject` throws (check_finite).
inline weight_view finite_or_zeroed(const weight_view& w, nonfinite_policy policy, std::vector<float>& storage) {
  if (check_finite(w, policy).count == 0) return w;
  storage.assign(w.data, w.data + w.size());
  for (float& x : storage)
    if (!std::isfinite(x)) x = 0.0f;
  weight_view clean = w;
  clean.data = storage.data();
  return clean;
}

}  // namespace mixq
