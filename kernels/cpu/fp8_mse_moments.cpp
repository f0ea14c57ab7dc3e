#include "kernels/cpu/fp8_mse_moments.hpp"

#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"
#include "kernels/cpu/fp8_mse_histogram.hpp"
#include "kernels/cpu/nvfp4_lanes.hpp"
#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu {
namespace {

// Buckets per binade, by the mantissa's top bits: 2^12.
constexpr int kBucketBits = 12;
constexpr uint32_t kBucketShift = 23 - kBucketBits;  // the mantissa's bits below the bucket
constexpr int kMaxTables = 48;

// Σ w and Σ w·m over a bucket's elements x = 2^e · m, w = 4^(e − E) for the table's binade E. (Its
// Σ w·m², times 4^E, is the elements' Σ x²: common to every candidate, summed once over the weight.)
struct moments {
  double w0 = 0.0, w1 = 0.0;
};

// Where each F32 binade (by its biased exponent) goes.
constexpr int16_t kTiny = -1;     // adds x² to every candidate
constexpr int16_t kOutside = -2;  // none expected (above the weight's max): the moments give up
struct binade_route {
  size_t first;      // the cell of the binade's first bucket
  uint32_t buckets;  // 2^12 - 1, or 0 for a binade without a table (tiny, or above the max)
  double weight;     // 4^(e − E)
};
struct layout {
  binade_route route[256];
  std::vector<int> exponent;  // per table: the binade whose coordinates it holds
  size_t first_cell(size_t table) const { return table << kBucketBits; }
  size_t cells() const { return first_cell(exponent.size()); }
};

// The tables: one for the binades that scale under every candidate (the core), one per other
// binade from the tiny ones up to the weight's max. nullopt when F32 subnormals are not tiny or
// the binades need too many tables.
std::optional<layout> layout_for(float weight_max, float least, float largest) {
  layout l;
  int16_t table_of[256];
  double weight_of[256];
  const double tiny_below = 0x1p-10 * double(least) * (1.0 - 0x1p-20);  // |x| / s rounds to code 0 under every s
  const int top = int(std::bit_cast<uint32_t>(weight_max) >> 23);
  int core = -1;
  for (int be = 0; be < 256; ++be) {
    weight_of[be] = 1.0;
    const int e = be - 127;
    if (be == 0 || std::ldexp(1.0, e + 1) <= tiny_below) {  // (F32 subnormals: below 2^-126)
      table_of[be] = be == 0 && 0x1p-126 > tiny_below ? kOutside : kTiny;
      continue;
    }
    if (be > top || be == 255) {
      table_of[be] = kOutside;
      continue;
    }
    const double lo = std::ldexp(1.0, e), hi = std::ldexp(2.0 - 0x1p-23, e);
    if (fp8_binade_scales(e, lo, hi, least) && fp8_binade_scales(e, lo, hi, largest)) {
      if (core < 0) core = int(l.exponent.size()), l.exponent.push_back(e);
      table_of[be] = int16_t(core);
      weight_of[be] = std::ldexp(1.0, 2 * (e - l.exponent[size_t(core)]));
      continue;
    }
    if (int(l.exponent.size()) == kMaxTables) return std::nullopt;
    table_of[be] = int16_t(l.exponent.size());
    l.exponent.push_back(e);
  }
  if (table_of[0] == kOutside) return std::nullopt;  // (so zeros, binade 0, are tiny: junk counts)
  for (int be = 0; be < 256; ++be) {
    const int id = table_of[be];
    l.route[be] = id < 0 ? binade_route{0, 0, 0.0}
                         : binade_route{l.first_cell(size_t(id)), (1u << kBucketBits) - 1u, weight_of[be]};
  }
  return l;
}

// The pass over the weight counts exactly, in integers: per element one 64-bit add into its
// bucket's counter, of 1 << 40 (the count, top 24 bits) plus the mantissa bits below the bucket
// (their sum, low 40 bits). The binades with tables are consecutive, from the least that is not
// tiny to the weight's max, and each has its own 2^12 counters, in order: an element's counter is
// its bits >> 11 less an offset. Zeros, tiny and non-finite values add to a junk counter, binades
// above the layout to an outside one. flush_counts turns the counters into the tables' moments
// before a count can overflow.
constexpr int kCountShift = 40;
static_assert(kFp8MomentCountsPerFlush < (int64_t(1) << (64 - kCountShift)));  // (the count's bits)
constexpr uint32_t kJunkCounter = 0, kOutsideCounter = 1, kFirstCounter = 2;
struct counter_layout {
  int first_binade = 0, binades = 0;  // the biased exponents with tables: [first, first + binades)
  size_t counters() const { return kFirstCounter + (size_t(binades) << kBucketBits); }
};
counter_layout counters_for(const layout& l) {
  counter_layout c;
  for (int be = 0; be < 256; ++be) {
    if (l.route[be].buckets == 0) continue;
    if (c.binades == 0) c.first_binade = be;
    c.binades = be - c.first_binade + 1;
  }
  return c;
}

// Adds the counters into tables (a binade's Σ w and Σ w·m, w its route's weight, m = 1 + mantissa
// · 2^-23: exact in double before the weight, a power of 4) and zeroes them; false when an element
// was outside the layout.
bool flush_counts(const layout& l, const counter_layout& c, uint64_t* counters, moments* tables) {
  const bool outside = counters[kOutsideCounter] != 0;
  counters[kJunkCounter] = counters[kOutsideCounter] = 0;
  for (int b = 0; b < c.binades; ++b) {
    const binade_route& r = l.route[c.first_binade + b];
    uint64_t* count = counters + kFirstCounter + (size_t(b) << kBucketBits);
    for (uint32_t k = 0; k < (1u << kBucketBits); ++k) {
      if (count[k] == 0) continue;
      const uint64_t n = count[k] >> kCountShift, below = count[k] & ((uint64_t(1) << kCountShift) - 1u);
      const double mantissas = double(n * (uint64_t(k) << kBucketShift) + below);  // (< 2^48: exact)
      moments& t = tables[r.first + k];
      t.w0 += r.weight * double(n);
      t.w1 += r.weight * (double(n) + mantissas * 0x1p-23);
      count[k] = 0;
    }
  }
  return !outside;
}

// Counts elements [begin, end) (at most kFp8MomentCountsPerFlush) and adds their Σ x² (inf / NaN
// as 0) into *sum_sq. The counters' indices and increments, and the squares, come 16 at a time from
// vector lanes; the adds to the counters one by one. The weight is prefetched 4 KiB ahead,
// non-temporally: streamed through L1 without displacing the counters from L2.
MIXQ_CLONES void count_elements(const uint32_t* bits, int64_t begin, int64_t end, const counter_layout& c,
                                uint64_t* counters, double* sum_sq) {
  using lanes::v16u;
  constexpr uint64_t kOne = uint64_t(1) << kCountShift;
  // The first and last counted key (bits >> 11); with no binade counted, a first above every key.
  const uint32_t least = c.binades ? uint32_t(c.first_binade) << kBucketBits : 1u << 21;
  const uint32_t last = least + (uint32_t(c.binades) << kBucketBits) - 1u;
  lanes::lane_sums8_as<true> squares;  // (as two 32-byte halves: the AVX2 clone keeps them in registers)
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    if (i + 1024 < end) __builtin_prefetch(bits + i + 1024, 0, 0);  // (locality 0: prefetchnta on x86)
    v16u u;
    std::memcpy(&u, bits + i, sizeof u);
    u &= 0x7fffffffu;
    const v16u finite = lanes::below(u, 0x7f800000u);
    lanes::v8d lo, hi;
    lanes::widen((lanes::v16f)(u & finite), &lo, &hi);
    squares.add(lo * lo + hi * hi);
    const v16u key = u >> kBucketShift, high = lanes::above(key, last);
    v16u index = ((key - least + kFirstCounter) & ~lanes::below(key, least) & ~high) | (high & kOutsideCounter);
    index &= finite;  // inf / NaN: junk
    alignas(64) uint32_t at[16], low[16];
    const v16u below_bucket = u & ((1u << kBucketShift) - 1u);
    std::memcpy(at, &index, sizeof at);
    std::memcpy(low, &below_bucket, sizeof low);
    for (int j = 0; j < 16; ++j) counters[at[j]] += kOne + low[j];
  }
  for (; i < end; ++i) {
    const uint32_t u = bits[i] & 0x7fffffffu, key = u >> kBucketShift;
    const bool finite = u < 0x7f800000u;
    const uint32_t index = !finite      ? kJunkCounter
                           : key < least ? kJunkCounter
                           : key > last  ? kOutsideCounter
                                         : key - least + kFirstCounter;
    counters[index] += kOne + (u & ((1u << kBucketShift) - 1u));
    const double x = finite ? double(std::bit_cast<float>(u)) : 0.0;
    *sum_sq += x * x;
  }
  *sum_sq += squares.total();
}

// Accumulates elements [begin, end) into tables and their Σ x² into *sum_sq; false when one lands
// outside the layout.
bool accumulate(const uint32_t* bits, int64_t begin, int64_t end, const layout& l, moments* tables, double* sum_sq,
                int64_t counts_per_flush) {
  const counter_layout c = counters_for(l);
  std::vector<uint64_t> counters(c.counters(), 0);
  bool inside = true;
  for (int64_t i0 = begin; i0 < end; i0 += counts_per_flush) {
    count_elements(bits, i0, std::min(end, i0 + counts_per_flush), c, counters.data(), sum_sq);
    inside &= flush_counts(l, c, counters.data(), tables);
  }
  return inside;
}

// The non-empty buckets, as columns: their least and largest magnitude in table coordinates, 2^E,
// and their moments.
struct buckets {
  std::vector<float> lo, hi;
  std::vector<double> x, w0, w1;
};

// Per candidate scale, over the buckets: Σ (V² Σw − 2 X V Σwm), the lesser code's where a code
// boundary crosses the bucket (with Σ x², the estimate), the width bound of those buckets, and the
// magnitude the roundings scale with. far: a bucket spans more than two codes (never, by the
// widths; the caller gives up).
struct candidate_sums {
  double estimate = 0.0, width = 0.0, magnitude = 0.0;
  bool far = false;
};

// 16 buckets at a time: codes and values in float lanes as the reference computes them, the sums
// in two halves of double lanes (the columns are padded to whole vectors).
constexpr size_t kVector = 16;

// (Selects as masks: GCC lowers 64-byte vector compares lane by lane without AVX-512. f_hi − f_lo,
// finite, is negative exactly where f_hi < f_lo; a −0 picked for +0 leaves the sums alike.)
template <simd_level L>
MIXQ_ALWAYS_INLINE candidate_sums sums_under_impl(const buckets& b, float scale) {
  using lanes::v16f, lanes::v16u, lanes::v8d, lanes::v8q;
  lanes::lane_sums8<L> estimate, width, magnitude;
  v16u far = {};
  for (size_t k = 0; k < b.lo.size(); k += kVector) {
    v16f lo, hi;
    std::memcpy(&lo, b.lo.data() + k, sizeof lo);
    std::memcpy(&hi, b.hi.data() + k, sizeof hi);
    const v16u c_lo = lanes::e4m3_encode(lo / scale), c_hi = lanes::e4m3_encode(hi / scale);
    const v16f v_lo = lanes::e4m3_decode(c_lo) * scale, v_hi = lanes::e4m3_decode(c_hi) * scale;
    far |= lanes::above(c_hi - c_lo, 1u);  // (c_hi >= c_lo: lo <= hi)
    const v16u split = lanes::above(c_hi - c_lo, 0u);
    const v16f span = hi - lo;  // exact: both in one binade
    v8d v_lo_d[2], v_hi_d[2], span_d[2];
    lanes::widen(v_lo, &v_lo_d[0], &v_lo_d[1]);
    lanes::widen(v_hi, &v_hi_d[0], &v_hi_d[1]);
    lanes::widen(span, &span_d[0], &span_d[1]);
    for (int half = 0; half < 2; ++half) {
      const v8q crossed = half ? __builtin_convertvector(__builtin_shufflevector(split, split, 8, 9, 10, 11, 12, 13, 14, 15), v8q)
                               : __builtin_convertvector(__builtin_shufflevector(split, split, 0, 1, 2, 3, 4, 5, 6, 7), v8q);
      v8d x, w0, w1;
      std::memcpy(&x, b.x.data() + k + 8 * half, sizeof x);
      std::memcpy(&w0, b.w0.data() + k + 8 * half, sizeof w0);
      std::memcpy(&w1, b.w1.data() + k + 8 * half, sizeof w1);
      const v8d vl = v_lo_d[half], vh = v_hi_d[half];
      const v8d f_lo = vl * vl * w0 - 2.0 * x * vl * w1, f_hi = vh * vh * w0 - 2.0 * x * vh * w1;
      const v8q crossed_mask = v8q{} - (crossed & 1u), hi_less = v8q{} - ((v8q)(f_hi - f_lo) >> 63);
      const v8q lesser = ((v8q)f_hi & hi_less) | ((v8q)f_lo & ~hi_less);
      estimate.add((v8d)((lesser & crossed_mask) | ((v8q)f_lo & ~crossed_mask)));
      // an element on the wrong side of the boundary errs by 2 |x − t| (v_hi − v_lo), |x − t| <= the span
      width.add((v8d)((v8q)(2.0 * span_d[half] * (vh - vl) * w0) & crossed_mask));
      magnitude.add(2.0 * x * vh * w1 + vh * vh * w0);
    }
  }
  candidate_sums s;
  s.estimate = estimate.total(), s.width = width.total(), s.magnitude = magnitude.total();
  uint32_t any_far = 0;
  for (int j = 0; j < 16; ++j) any_far |= far[j];
  s.far = any_far != 0;
  return s;
}
MIXQ_SIMD_KERNEL(candidate_sums, sums_under, sums_under_impl, (const buckets& b, float scale), (b, scale))

}  // namespace

std::optional<std::vector<size_t>> fp8_moment_contenders(const source_matrix& w, float weight_max, float amax,
                                                         std::span<const float> multipliers,
                                                         std::vector<fp8_moment_estimate>* estimates,
                                                         int64_t counts_per_flush) {
  counts_per_flush = std::clamp<int64_t>(counts_per_flush, 1, kFp8MomentCountsPerFlush);
  std::vector<float> scale(multipliers.size());
  float least = INFINITY, largest = 0.0f;
  for (size_t c = 0; c < multipliers.size(); ++c) {
    scale[c] = fp8_scale_for_amax(amax * multipliers[c]);
    if (std::isfinite(scale[c])) least = std::min(least, scale[c]), largest = std::max(largest, scale[c]);
  }
  if (!(largest > 0.0f)) return std::vector<size_t>{};  // every scale infinite: errs by NaN
  const std::optional<layout> l = layout_for(weight_max, least, largest);
  if (!l) return std::nullopt;

  // One pass, a table set per thread, added in thread order.
  const auto* bits = static_cast<const uint32_t*>(w.data);
  const int64_t n = w.size();
  const size_t cells = l->cells();
  std::vector<std::vector<moments>> per_thread;
  std::vector<double> sum_sq_of;
  int inside = 1;
#pragma omp parallel reduction(& : inside) if (worth_threads(n * 4))
  {
#pragma omp single
    {
      per_thread.resize(size_t(omp_get_num_threads()));
      sum_sq_of.assign(per_thread.size(), 0.0);
    }
    const size_t t = size_t(omp_get_thread_num()), nt = per_thread.size();
    per_thread[t].assign(cells, moments{});
    const int64_t begin = n * int64_t(t) / int64_t(nt), end = n * int64_t(t + 1) / int64_t(nt);
    inside &= int(accumulate(bits, begin, end, *l, per_thread[t].data(), &sum_sq_of[t], counts_per_flush));
  }
  if (!inside) return std::nullopt;
  double sum_sq = 0.0;
  for (size_t t = 0; t < per_thread.size(); ++t) {
    sum_sq += sum_sq_of[t];
    if (t == 0) continue;
    for (size_t i = 0; i < cells; ++i) {
      per_thread[0][i].w0 += per_thread[t][i].w0;
      per_thread[0][i].w1 += per_thread[t][i].w1;
    }
  }
  buckets b;
  for (size_t t = 0; t < l->exponent.size(); ++t) {
    const uint32_t top = uint32_t(l->exponent[t] + 127) << 23;
    for (size_t i = l->first_cell(t); i < l->first_cell(t + 1); ++i) {
      const moments& m = per_thread[0][i];
      if (m.w0 == 0.0) continue;
      const uint32_t k = uint32_t(i - l->first_cell(t)) << kBucketShift;
      b.lo.push_back(std::bit_cast<float>(top | k));
      b.hi.push_back(std::bit_cast<float>(top | k | ((1u << kBucketShift) - 1u)));
      b.x.push_back(std::ldexp(1.0, l->exponent[t]));
      b.w0.push_back(m.w0);
      b.w1.push_back(m.w1);
    }
  }
  while (b.lo.size() % kVector != 0) {  // padding: no weight, no error
    b.lo.push_back(1.0f), b.hi.push_back(1.0f), b.x.push_back(1.0);
    b.w0.push_back(0.0), b.w1.push_back(0.0);
  }

  // |estimate − exact| <= the widths plus the roundings: the moments' sums (up to n terms each,
  // non-negative), the thread sums, each bucket's few products and the sum over the buckets, all
  // within γ_K of the magnitude; the reference's own sum is within γ_(n+8) of the exact one. Twice
  // that is the margin.
  const double g = rounding_gamma(double(n) + double(b.lo.size()) + double(per_thread.size()) + 64.0);
  std::vector<double> estimate(scale.size(), NAN), bound(scale.size(), NAN);
  int far = 0;
#pragma omp parallel for schedule(dynamic) reduction(| : far) if (worth_threads(int64_t(b.lo.size() * scale.size()) * 64))
  for (size_t c = 0; c < scale.size(); ++c) {
    if (!std::isfinite(scale[c])) continue;  // (errs by NaN: never the reference's choice)
    const candidate_sums s = sums_under(b, scale[c]);
    far |= int(s.far);
    estimate[c] = sum_sq + s.estimate;
    bound[c] = 1.01 * s.width + 4.0 * g * (sum_sq + s.magnitude + std::abs(estimate[c]) + s.width);
  }
  if (far) return std::nullopt;
  double least_upper = INFINITY;
  for (size_t c = 0; c < scale.size(); ++c)
    if (std::isfinite(scale[c])) least_upper = std::min(least_upper, estimate[c] + bound[c]);
  if (estimates)
    for (size_t c = 0; c < scale.size(); ++c) estimates->push_back({estimate[c], bound[c]});
  std::vector<size_t> kept;
  for (size_t c = 0; c < scale.size(); ++c)
    if (std::isfinite(scale[c]) && estimate[c] - bound[c] <= least_upper) kept.push_back(c);
  if (sum_sq == 0.0 && kept.size() > 1) kept.erase(kept.begin() + 1, kept.end());  // all-zero: every error 0, the first
  return kept;
}

}  // namespace mixq::cpu
