// Deterministic synthetic weights with the statistics that stress quantizers.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "formats/weight_view.hpp"

namespace mixq::testing {

struct test_tensor {
  std::string name;
  int64_t rows = 0, cols = 0;
  std::vector<float> values;
  weight_view view() const { return {values.data(), rows, cols, name}; }
};

enum class tensor_kind { normal, heavy_tailed, outliers, zero_blocks, tiny_blocks };

inline test_tensor make_tensor(tensor_kind kind, int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> student(3.0f);
  test_tensor t;
  t.rows = rows;
  t.cols = cols;
  t.values.resize(size_t(rows * cols));
  const char* names[] = {"normal", "heavy_tailed", "outliers", "zero_blocks", "tiny_blocks"};
  t.name = names[int(kind)];
  for (auto& v : t.values) v = kind == tensor_kind::heavy_tailed ? 0.01f * student(rng) : normal(rng);
  if (kind == tensor_kind::outliers)  // a few input channels 50x larger, as in real LLM weights
    for (int64_t c = 3; c < cols; c += 37)
      for (int64_t r = 0; r < rows; ++r) t.values[size_t(r * cols + c)] *= 50.0f;
  if (kind == tensor_kind::zero_blocks || kind == tensor_kind::tiny_blocks)
    for (int64_t b = 0; b * 16 < rows * cols; b += 3)
      for (int i = 0; i < 16 && b * 16 + i < rows * cols; ++i)
        t.values[size_t(b * 16 + i)] *= kind == tensor_kind::zero_blocks ? 0.0f : (b % 2 ? 1e-6f : 1e-9f);
  return t;
}

inline std::vector<test_tensor> all_kinds(int64_t rows, int64_t cols, uint32_t seed = 1) {
  std::vector<test_tensor> v;
  for (int k = 0; k < 5; ++k) v.push_back(make_tensor(tensor_kind(k), rows, cols, seed + uint32_t(k)));
  return v;
}

// Nearest E2M1 magnitude index (0..7) to a >= 0 by exhaustive search, saturating at 6; exact ties
// go to the even index. An independent reference for the E2M1 rounding under test.
inline int nearest_e2m1(double a) {
  const double grid[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  int best = 0;
  for (int k = 1; k < 8; ++k) {
    const double dk = std::fabs(a - grid[k]), db = std::fabs(a - grid[best]);
    if (dk < db || (dk == db && k % 2 == 0)) best = k;
  }
  return best;
}

}  // namespace mixq::testing
