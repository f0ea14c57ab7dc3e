// FP8 MSE scale search over 16-bit weights by counting their magnitudes.
//
// A BF16 / F16 tensor (or an F32 one whose values are all BF16 values, as a BF16 model saved in
// F32) holds at most 32768 distinct magnitudes, and an element's FP8 error under a scale depends
// on its magnitude alone, so a candidate scale's squared error is Σ count · err² over the counts.
// Better still, within one binade [2^e, 2^(e+1)) the error is 4^e times that of the same mantissa
// in a reference binade, as long as x / scale stays among FP8's normal, unsaturated values
// (every rounding then scales by a power of two): a candidate costs one pass over the 2^m mantissas
// (m = 7 for BF16) and one dot product per binade, with only the binades at FP8's edges
// (saturation, subnormals) evaluated value by value.
//
// That sum runs in another order than the reference's (fp8_sq_error: row by row, element by
// element), so it serves as an estimate with a proven bound; the candidates the bound cannot
// separate are then evaluated exactly, in the reference's order. The choice is always the
// reference's, bit for bit.
//
// Per channel (row by row, BF16), a coarser screening runs first: each candidate's error bounded
// from a float sum over differences cached per row amax mantissa, the smallest values bounded
// instead of summed; only the candidates it cannot rule out (mostly none but the choice) are
// estimated as above.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

#include "formats/code_bytes.hpp"
#include "kernels/cpu/rounding_gamma.hpp"
#include "kernels/cpu/source_matrix.hpp"

namespace mixq::cpu {

// Whether every x in [lo, hi] (of the binade 2^exponent) keeps x / scale (rounded to float) within
// [2^-6, 464): FP8 normal, never rounded up to saturation, every float along the way normal. Then
// x's FP8 error under scale is 4^(exponent − q) times that of the same mantissa in the binade
// 2^q, q = frexp's exponent of scale. Monotone in the scale: true at two scales, true between.
bool fp8_binade_scales(int exponent, double lo, double hi, float scale);

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

// Counted magnitudes (of a tensor or of one row) and the squared FP8 error they give under a scale.
class fp8_error_estimate {
 public:
  void take(const magnitude_histogram& h);

  // The indices (ascending) of the multipliers whose exact squared error
  // fp8_sq_error(w, fp8_scale_for_amax(amax · m)) may be the least: one index unless two candidates
  // agree to the estimate's bound (~1e-9 relative). The reference's choice (the first least) is
  // always among them. A candidate whose scale is infinite errs by NaN and is never one: none when
  // every candidate's is.
  std::vector<size_t> contenders(float amax, std::span<const float> multipliers);
  // The same for one row whose counts are table[lo..hi] (indexed by BF16 / F16 magnitude bits;
  // finite ones only), taken straight from the table, which is left zeroed for the next row.
  std::vector<size_t> row_contenders(source_dtype dtype, uint32_t* table, uint32_t lo, uint32_t hi, float amax,
                                     std::span<const float> multipliers);
  // The last contenders() call's estimate for each multiplier (+inf for one ruled out unevaluated:
  // its error exceeds another's; NaN for a BF16 row's lone candidate left by the screening, the
  // choice without an estimate), and its bound: the reference's sum
  // over the counted magnitudes (and the exact sum of its terms) is within relative_bound() ·
  // estimate of it.
  const std::vector<double>& estimates() const { return estimates_; }
  double relative_bound() const { return relative_bound_; }

  // The estimate of Σ count · err² under one scale: the reference's sum within ~1e-12 relative.
  double sq_error(float scale);

  struct edge_range {
    size_t first, last;           // the edges that scale: [first, last)
    int64_t low_end, high_begin;  // values_ below and above them
  };

 private:
  struct binade {
    int exponent;     // magnitudes 2^exponent · (1 + k / 2^m)
    float lo, hi;     // the least and the largest counted
    size_t offset;    // into counts_, 2^m of them
    size_t first, n;  // an edge binade's non-zero counts, in values_ / nonzero_counts_
  };
  void take_counts(source_dtype dtype, const uint64_t* table, uint32_t lo, uint32_t hi);
  // Sums the binades that scale under every scale in [least, largest] into core_; the others are
  // edges, evaluated per scale. take_row does the same straight from a row's table.
  void split(float least, float largest);
  void take_row(source_dtype dtype, uint32_t* table, uint32_t lo, uint32_t hi, float least, float largest);
  void start_split();
  void add_to_core(int exponent, const double* counts);
  void add_edge(const binade& b);  // b's counts at b.offset in counts_
  void finish_split();
  void add_outward(size_t into, size_t from);
  static std::vector<float> scales_of(float amax, std::span<const float> multipliers);
  std::vector<size_t> choose(std::span<const float> scales);  // after a split over them
  bool screen(std::span<const float> scales);                 // a row's, before choose
  void largest_values_errors(std::span<const float> subset);  // into subset_out_
  void estimate(std::span<const float> scales, double* out);  // +inf: ruled out unevaluated
  double reference_part(size_t c, float scale);
  float* cached_differences(size_t c, float scale);  // null where not cached
  double relative_margin() const;

  int mantissa_bits_ = 7;
  double elements_ = 0.0;
  size_t n_binades_ = 0;                // non-empty binades of normal magnitudes
  std::vector<binade> binades_;         // those binades (take: all; take_row: none kept)
  // (default-initialized: resizing a row's edge into them writes no zeros that are overwritten)
  std::vector<double, default_init_allocator<double>> counts_;  // per binade (take_row: per edge), by mantissa
  std::vector<double> core_;            // Σ 4^(exponent − core_exponent_) · counts over core binades
  int core_exponent_ = 0;
  bool has_core_ = false;
  std::vector<binade> edges_;
  size_t below_core_ = 0;          // edges_ below the core come first
  std::vector<double> outward_;    // per edge: its scaled counts and those between it and the core
  bool bottom_outward_ = true;     // outward_ holds the bottom edges' (else only the top ones')
  std::vector<double> combined_;  // the core and the edges that scale under a scale, summed
  size_t combined_first_ = 0, combined_last_ = 0;  // for the edges [first, last)
  bool combined_valid_ = false;
  // The edges' non-zero magnitudes (zero adds no error) and their counts: 16-bit subnormals first
  // (tiny_ of them), zero padding last.
  std::vector<float, default_init_allocator<float>> values_;
  std::vector<double, default_init_allocator<double>> nonzero_counts_;
  size_t tiny_ = 0;
  std::vector<edge_range> ranges_;
  std::vector<double> errors_;
  std::vector<double> estimates_;
  std::vector<float> subset_scales_;  // estimate()'s scratch: a subset of the scales at a time
  std::vector<edge_range> subset_ranges_;
  std::vector<double> subset_out_;
  std::vector<size_t> subset_index_;
  std::vector<uint8_t> ruled_out_;
  // screen()'s: the scales it rules out (empty: none), its weight in float, its lower bounds
  std::vector<uint8_t> screened_;
  std::vector<float> coarse_weight_;
  std::vector<double> coarse_lower_;
  struct coarse_candidate {
    size_t index;
    const float* differences;  // its cached ones (null: none)
    double sum = 0.0;          // its coarse sum
  };
  std::vector<coarse_candidate> unclipped_, saturating_;  // the scales under which the top edges scale, and not
  double relative_bound_ = 0.0;
  // Rows' reference differences (reference_part), per amax slot and candidate: 2.5 MB for the
  // default 39 multipliers, reserved at the first BF16 row and left unwritten (a slot is read only
  // after its tag is set), so a thread's resident share is the slots its rows use.
  static constexpr int kCachedMantissaBits = 7;
  static constexpr size_t kCacheSlots = 128, kCachedCandidates = 64;
  std::vector<float, default_init_allocator<float>> cache_;
  std::vector<uint32_t> cache_tags_;  // the scale's mantissa | 2^31 a slot's differences are of
  size_t cache_candidates_ = 0;
  size_t cache_slot_ = SIZE_MAX;  // the current row's, during row_contenders
};

// Counts the magnitude keys (bits & 0x7fff) of n 16-bit values into table, four per 64-bit load
// (n a multiple of 4): row_magnitude_counter's count, and the one beside a row's codes.
inline __attribute__((always_inline)) void count_magnitude_keys(const uint16_t* p, int64_t n, uint32_t* table) {
  for (int64_t j = 0; j < n; j += 4) {
    uint64_t w;
    std::memcpy(&w, p + j, sizeof w);
    ++table[w & 0x7fffu];
    ++table[(w >> 16) & 0x7fffu];
    ++table[(w >> 32) & 0x7fffu];
    ++table[(w >> 48) & 0x7fffu];
  }
}

// Per-channel MSE: one row's magnitudes counted with a table kept per thread between rows.
struct row_magnitude_counter {
  std::vector<uint32_t> table;  // 32768 counters, zero between calls
  fp8_error_estimate estimate;
  // Counts row r of w (16-bit rows in place; x: an F32 row's values, non-finite ones zeroed, unused
  // otherwise) and returns fp8_error_estimate::contenders for the row; nullopt when w is F32 and a
  // value is not a BF16 value (the estimate does not hold the row).
  std::optional<std::vector<size_t>> contenders(const source_matrix& w, int64_t r, const float* x, float amax,
                                                std::span<const float> multipliers);
  // The same in two steps for a 16-bit row p (its bits): count16 counts it and returns its least
  // non-zero and largest magnitude keys (the largest: its max magnitude, inf / NaN included), then
  // counted_contenders (dtype: bf16 or f16) or forget (the row is not searched) leaves the table zeroed.
  std::pair<uint32_t, uint32_t> count16(const uint16_t* p, int64_t n);
  std::vector<size_t> counted_contenders(source_dtype dtype, std::pair<uint32_t, uint32_t> keys, float amax,
                                         std::span<const float> multipliers);
  void forget(std::pair<uint32_t, uint32_t> keys);
};

}  // namespace mixq::cpu
