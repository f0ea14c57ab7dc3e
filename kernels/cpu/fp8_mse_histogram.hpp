// Per-tensor FP8 MSE scale search over 16-bit weights by a histogram of their magnitudes.
//
// A BF16 / F16 tensor (or an F32 one whose values are all BF16 values, as a BF16 model saved in
// F32) holds at most 32768 distinct magnitudes, and an element's FP8 error under a
// scale depends on its magnitude alone, so a candidate scale's squared error is Σ count · err² over
// the histogram: the 39 candidates cost 39 passes over at most 32768 bins instead of 39 over the
// tensor. That sum runs in another order than the reference's (fp8_sq_error: row by row, element
// by element), so it serves as an estimate with a proven bound; the candidates the bound cannot
// separate are then evaluated exactly, in the reference's order. The choice is always the
// reference's, bit for bit.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "kernels/cpu/source_matrix.hpp"

namespace mixq::cpu {

// Counts of |x| bit patterns (sign cleared: index = bits & 0x7fff) of a BF16 / F16 source, or of an
// F32 source whose values are all BF16 values (counted as BF16).
struct magnitude_histogram {
  source_dtype dtype = source_dtype::bf16;
  std::vector<uint64_t> count;  // 32768 bins

  // One parallel pass; nullopt for an F32 source with a value that is not a BF16 value.
  static std::optional<magnitude_histogram> of(const source_matrix& w);
  float value(uint32_t bin) const;                       // the magnitude a bin counts
  bool has_nonfinite() const;                            // an inf / NaN bin is non-empty
  void zero_nonfinite();                                 // moves inf / NaN counts to the zero bin
  float amax() const;                                    // the largest finite magnitude (0 if none)
  uint32_t first_nonfinite_bin() const;                  // inf / NaN bins are this one and above
};

// The indices (ascending) of the multipliers whose exact per-tensor squared error
// fp8_sq_error(w, fp8_scale_for_amax(amax · m)) may be the least: one index unless two candidates
// agree to the estimate's bound (~1e-9 relative). The reference's choice (the first least) is
// always among them.
std::vector<size_t> fp8_mse_contenders(const magnitude_histogram& h, float amax, std::span<const float> multipliers);

// The same over distinct magnitudes and their counts (any fixed order).
std::vector<size_t> fp8_mse_contenders(std::span<const float> values, std::span<const double> counts, float amax,
                                       std::span<const float> multipliers);

// Per-channel MSE: the distinct magnitudes of one row (F32 copies of BF16 values: a 4096-wide
// BF16 weight row holds ~900), counted with a table kept per thread between rows.
struct bf16_row_magnitudes {
  std::vector<uint32_t> table;  // 32768 counters, zero between calls
  std::vector<uint16_t> keys;
  std::vector<float> values;
  std::vector<double> counts;
  // false when a value is not a BF16 value (values / counts are then not the row's).
  bool count(const float* x, int64_t n);
};

}  // namespace mixq::cpu
