// The classic bound on a floating-point sum's rounding, for the estimates that stand in for the
// reference's in-order sums.
#pragma once

namespace mixq::cpu {

// γ_n = n·u / (1 − n·u), u = 2^-53: a sum of n rounded non-negative double terms, in any order, is
// within γ_n of the exact one.
inline double rounding_gamma(double n) {
  const double nu = n * 0x1p-53;
  return nu / (1.0 - nu);
}

}  // namespace mixq::cpu
