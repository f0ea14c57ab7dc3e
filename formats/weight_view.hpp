// A read-only 2-D fp32 view of a weight [rows, cols] (row-major; K = cols is the block axis),
// named so that errors can say which tensor they are about.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <span>
#include <string_view>

namespace mixq {

struct weight_view {
  const float* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  std::string_view name = "<unnamed>";

  int64_t size() const { return rows * cols; }
  const float* row(int64_t r) const { return data + r * cols; }
};

// Bad numeric input (NaN / Inf, a shape a format cannot hold): the message names the tensor.
class format_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What to do with NaN / Inf in a weight: refuse (default), or count them, report, and quantize
// them as zeros.
enum class nonfinite_policy : uint8_t { reject, zero };

struct nonfinite_report {
  int64_t count = 0;
  int64_t first_index = -1;  // flat row-major index of the first NaN / Inf
};

// Scans w; under `reject` throws format_error naming the tensor and the first bad [row, col].
nonfinite_report check_finite(const weight_view& w, nonfinite_policy policy = nonfinite_policy::reject);

// The message for a tensor whose first non-finite value `value` is at flat_index (of count).
std::string nonfinite_message(const weight_view& w, int64_t flat_index, float value, int64_t count);

// A static amax given with the options (shared by fused siblings, or calibrated) must be finite:
// an infinite one would make every scale infinite and every code zero.
void require_finite_static_amax(std::string_view tensor, float amax, std::string_view format);
// MSE multipliers must be positive and finite: a negative or NaN one scales nothing meaningful.
void require_valid_multipliers(std::string_view tensor, std::span<const float> multipliers, std::string_view format);

// "tensor 'name' [r, c]" text for messages.
std::string describe_index(const weight_view& w, int64_t flat_index);

}  // namespace mixq
