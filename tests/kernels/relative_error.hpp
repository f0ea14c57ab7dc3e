// The kernels' tests compare float results with double-precision references this way.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace mixq::testing {

// Largest absolute error over the largest reference magnitude; NaN anywhere makes it infinite.
inline double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::abs(double(got[i]) - want[i]);
    err = e == e ? std::max(err, e) : INFINITY;
    ref = std::max(ref, std::abs(want[i]));
  }
  return err / std::max(ref, 1e-30);
}

}  // namespace mixq::testing
