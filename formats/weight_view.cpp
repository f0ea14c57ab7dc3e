#include "formats/weight_view.hpp"

#include <cmath>

#include <fmt/format.h>

namespace mixq {

void require_finite_static_amax(std::string_view tensor, float amax, std::string_view format) {
  if (std::isinf(amax))
    throw format_error(fmt::format("tensor '{}': the static amax given for {} is {}; it must be finite", tensor, format, amax));
}

void require_valid_multipliers(std::string_view tensor, std::span<const float> multipliers, std::string_view format) {
  for (size_t i = 0; i < multipliers.size(); ++i)
    if (!(multipliers[i] > 0.0f) || std::isinf(multipliers[i]))
      throw format_error(fmt::format("tensor '{}': {} MSE multiplier {} (index {}) must be a positive finite number",
                                     tensor, format, multipliers[i], i));
}

std::string describe_index(const weight_view& w, int64_t flat_index) {
  return fmt::format("tensor '{}' [{}, {}] (flat index {})", w.name, flat_index / w.cols, flat_index % w.cols,
                     flat_index);
}

std::string nonfinite_message(const weight_view& w, int64_t flat_index, float value, int64_t count) {
  return fmt::format("{} is {} ({} non-finite value{} in the tensor); refusing to quantize it "
                     "(fix the checkpoint; `mixq qerror --allow-nonfinite` measures the error with them quantized as 0)",
                     describe_index(w, flat_index), value, count, count == 1 ? "" : "s");
}

nonfinite_report check_finite(const weight_view& w, nonfinite_policy policy) {
  nonfinite_report report;
  const int64_t n = w.size();
  for (int64_t i = 0; i < n; ++i) {
    if (std::isfinite(w.data[i])) continue;
    if (report.count++ == 0) report.first_index = i;
  }
  if (report.count > 0 && policy == nonfinite_policy::reject)
    throw format_error(nonfinite_message(w, report.first_index, w.data[report.first_index], report.count));
  return report;
}

}  // namespace mixq
