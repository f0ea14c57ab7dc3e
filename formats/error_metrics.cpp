#include "formats/error_metrics.hpp"

#include <cmath>
#include <limits>
#include <stdexcept>

namespace mixq {

error_stats error_between(std::span<const float> ref, std::span<const float> approx) {
  if (ref.size() != approx.size()) throw std::invalid_argument("error_between: sizes differ");
  double signal = 0.0, noise = 0.0, max_abs = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = ref[i], d = r - double(approx[i]);
    signal += r * r;
    noise += d * d;
    max_abs = std::fmax(max_abs, std::fabs(d));
  }
  error_stats s;
  s.count = int64_t(ref.size());
  s.mse = ref.empty() ? 0.0 : noise / double(ref.size());
  s.max_abs = max_abs;
  s.snr_db = noise == 0.0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(signal / noise);
  return s;
}

std::vector<error_stats> error_per_block(std::span<const float> ref, std::span<const float> approx, int64_t block) {
  if (block <= 0) throw std::invalid_argument("error_per_block: block must be positive");
  if (ref.size() != approx.size()) throw std::invalid_argument("error_per_block: sizes differ");
  std::vector<error_stats> out;
  for (size_t b = 0; b < ref.size(); b += size_t(block)) {
    const size_t n = std::min(size_t(block), ref.size() - b);
    out.push_back(error_between(ref.subspan(b, n), approx.subspan(b, n)));
  }
  return out;
}

}  // namespace mixq
