// How far a quantized tensor is from its source: MSE, signal-to-noise ratio, max abs error.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace mixq {

struct error_stats {
  double mse = 0.0;       // mean of (ref − approx)²
  double snr_db = 0.0;    // 10·log10(Σ ref² / Σ (ref − approx)²); +inf when exact
  double max_abs = 0.0;   // max |ref − approx|
  int64_t count = 0;
};

error_stats error_between(std::span<const float> ref, std::span<const float> approx);
// One error_stats per consecutive block of `block` values (the last may be shorter).
std::vector<error_stats> error_per_block(std::span<const float> ref, std::span<const float> approx, int64_t block);

}  // namespace mixq
