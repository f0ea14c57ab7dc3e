#include "pipeline/report/number_text.hpp"

#include <cmath>

#include <fmt/format.h>

namespace mixq {

std::string score_text(double score) { return score == 0 ? "0" : fmt::format("{:.2e}", score); }

std::string count_text(int64_t n) {
  const std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out = n < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string fixed_text(double v, int decimals) { return fmt::format("{:.{}f}", v, decimals); }

std::string percent_text(double fraction) { return fmt::format("{:.1f}%", fraction * 100); }

std::string seconds_text(double seconds) {
  if (seconds < 1) return fmt::format("{:.0f} ms", seconds * 1000);
  if (seconds < 120) return fmt::format("{:.1f} s", seconds);
  const auto whole = int64_t(std::llround(seconds));
  return fmt::format("{} min {:02} s", whole / 60, whole % 60);
}

std::string bytes_text(double b) {
  static constexpr const char* kUnits[] = {"B", "KB", "MB", "GB", "TB"};
  int u = 0;
  while (b >= 1000.0 && u < 4) b /= 1000.0, ++u;
  return u == 0 ? fmt::format("{:.0f} {}", b, kUnits[u]) : fmt::format("{:.2f} {}", b, kUnits[u]);
}

}  // namespace mixq
