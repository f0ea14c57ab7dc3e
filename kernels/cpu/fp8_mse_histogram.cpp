#include "kernels/cpu/fp8_mse_histogram.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <utility>

#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"
#include "kernels/cpu/nvfp4_lanes.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu {
namespace {

constexpr uint32_t bins = 0x8000;

// Counts one thread's values by magnitude key; two interleaved tables so that runs of equal values
// (zeros, padding) do not chain every increment on the one before. F32 values count by their top
// 16 bits (their BF16 value), the bits below ORed into `rest`: zero when every value is a BF16 one.
MIXQ_ALWAYS_INLINE uint32_t key_of(uint16_t v, uint32_t&) { return v & 0x7fffu; }
MIXQ_ALWAYS_INLINE uint32_t key_of(uint32_t v, uint32_t& rest) {
  rest |= v & 0xffffu;
  return (v >> 16) & 0x7fffu;
}

template <class T>
uint32_t count_values(const T* p, int64_t n, uint32_t* h0, uint32_t* h1) {
  uint32_t rest = 0;
  int64_t i = 0;
  for (; i + 2 <= n; i += 2) {
    ++h0[key_of(p[i], rest)];
    ++h1[key_of(p[i + 1], rest)];
  }
  if (i < n) ++h0[key_of(p[i], rest)];
  return rest;
}

// Σ count · err² over the distinct magnitudes under one scale (vectorized, fixed lane order).
MIXQ_CLONES double weighted_sq_error(const float* values, const double* counts, int64_t n, float scale) {
  return lanes::fp8_sq_error_lanes(values, counts, n, scale);
}

// Machine epsilon's half (double) times n, as the γ_n of a sum of n rounded terms.
double gamma(double n) {
  const double nu = n * 0x1p-53;
  return nu / (1.0 - nu);
}

}  // namespace

std::optional<magnitude_histogram> magnitude_histogram::of(const source_matrix& w) {
  const int64_t n = w.size();
  const bool f32 = w.dtype == source_dtype::f32;
  if (f32) {  // a quick look first: most F32 weights are not BF16 values, and the first values say so
    const auto* p = static_cast<const uint32_t*>(w.data);
    for (int64_t i = 0; i < std::min<int64_t>(n, 4096); ++i)
      if (p[i] & 0xffffu) return std::nullopt;
  }
  magnitude_histogram h;
  h.dtype = f32 ? source_dtype::bf16 : w.dtype;
  h.count.assign(bins, 0);
  uint32_t rest = 0;
#pragma omp parallel if (worth_threads(n)) reduction(| : rest)
  {
    // 32-bit tables per thread, added into the 64-bit total before they could overflow.
    std::vector<uint32_t> local(2 * bins, 0);
    const auto flush = [&] {
#pragma omp critical
      for (uint32_t b = 0; b < bins; ++b) h.count[b] += uint64_t(local[b]) + local[bins + b];
      std::fill(local.begin(), local.end(), 0u);
    };
    constexpr int64_t step = int64_t(1) << 16;
    int64_t pending = 0;
#pragma omp for schedule(static)
    for (int64_t s = 0; s < n; s += step) {
      const int64_t len = std::min(step, n - s);
      if (pending + len > int64_t(UINT32_MAX)) flush(), pending = 0;
      rest |= f32 ? count_values(static_cast<const uint32_t*>(w.data) + s, len, local.data(), local.data() + bins)
                  : count_values(static_cast<const uint16_t*>(w.data) + s, len, local.data(), local.data() + bins);
      pending += len;
    }
    flush();
  }
  if (rest != 0) return std::nullopt;
  return h;
}

float magnitude_histogram::value(uint32_t bin) const {
  return dtype == source_dtype::bf16 ? bf16_decode(uint16_t(bin)) : f16_decode_table()[bin];
}

uint32_t magnitude_histogram::first_nonfinite_bin() const {
  return dtype == source_dtype::bf16 ? 0x7f80 : 0x7c00;  // exponent all ones
}

bool magnitude_histogram::has_nonfinite() const {
  return std::any_of(count.begin() + first_nonfinite_bin(), count.end(), [](uint64_t c) { return c != 0; });
}

void magnitude_histogram::zero_nonfinite() {
  for (uint32_t b = first_nonfinite_bin(); b < bins; ++b) count[0] += std::exchange(count[b], 0);
}

float magnitude_histogram::amax() const {
  for (uint32_t b = first_nonfinite_bin(); b-- > 0;)
    if (count[b] != 0) return value(b);
  return 0.0f;
}

std::vector<size_t> fp8_mse_contenders(const magnitude_histogram& h, float amax, std::span<const float> multipliers) {
  std::vector<float> values;
  std::vector<double> counts;
  for (uint32_t b = 0; b < bins; ++b)
    if (h.count[b] != 0) {
      values.push_back(h.value(b));
      counts.push_back(double(h.count[b]));
    }
  return fp8_mse_contenders(values, counts, amax, multipliers);
}

std::vector<size_t> fp8_mse_contenders(std::span<const float> values, std::span<const double> counts, float amax,
                                       std::span<const float> multipliers) {
  double elements = 0.0;
  for (double c : counts) elements += c;
  const size_t n_cand = multipliers.size();
  std::vector<double> estimate(n_cand);
#pragma omp parallel for schedule(static) if (worth_threads(int64_t(values.size() * n_cand)))
  for (size_t c = 0; c < n_cand; ++c) {
    const float scale = fp8_scale_for_amax(amax * multipliers[c]);
    estimate[c] = weighted_sq_error(values.data(), counts.data(), int64_t(values.size()), scale);
  }
  // Reference and estimate both sum exactly the same nonnegative terms, each once rounded: within
  // γ_N and γ_(B+1) of the exact sum E. So |reference − estimate| ≤ (γ_N + γ_(B+1)) E, and
  // E ≤ estimate / (1 − γ_(B+1)); the margin is twice that.
  const double g = gamma(double(values.size()) + 1.0);
  const double relative = 2.0 * (gamma(elements) + g) / (1.0 - g);
  double least_upper = INFINITY;
  for (double e : estimate) least_upper = std::min(least_upper, e + relative * e);
  std::vector<size_t> contenders;
  for (size_t c = 0; c < n_cand; ++c)
    if (estimate[c] - relative * estimate[c] <= least_upper) contenders.push_back(c);
  // An estimate of 0 is exact (every term is 0): the first such candidate is the choice.
  if (least_upper == 0.0) contenders.resize(1);
  return contenders;
}

bool bf16_row_magnitudes::count(const float* x, int64_t n) {
  if (table.empty()) table.assign(bins, 0);
  keys.clear();
  uint32_t rest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t key = key_of(std::bit_cast<uint32_t>(x[i]), rest);
    if (table[key]++ == 0) keys.push_back(uint16_t(key));
  }
  values.resize(keys.size());
  counts.resize(keys.size());
  for (size_t k = 0; k < keys.size(); ++k) {  // first-seen order: fixed for a given row
    values[k] = bf16_decode(keys[k]);
    counts[k] = double(std::exchange(table[keys[k]], 0u));
  }
  return rest == 0;
}

}  // namespace mixq::cpu
