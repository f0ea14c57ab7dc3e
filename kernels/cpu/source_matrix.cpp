#include "kernels/cpu/source_matrix.hpp"

#include <algorithm>
#include <array>
#include <bit>

#include "kernels/cpu/simd_dispatch.hpp"

namespace mixq::cpu {

const float* f16_decode_table() {
  static const std::array<float, 65536> table = [] {
    std::array<float, 65536> t{};
    for (uint32_t h = 0; h < 65536; ++h) t[h] = fp16_decode(static_cast<uint16_t>(h));
    return t;
  }();
  return table.data();
}

namespace {

// Max over the magnitude bits equals max over values for finite IEEE numbers, and integer max
// vectorizes where float max with NaN semantics does not.
struct bits_scan {
  uint32_t amax_bits = 0;
  int64_t nonfinite = 0;
  int64_t first_nonfinite = -1;
};

template <class Bits, Bits kAbsMask, Bits kExpMask>
MIXQ_CLONES bits_scan scan_bits(const Bits* p, int64_t n) {
  Bits best = 0, any_nonfinite = 0;
#pragma omp parallel for simd reduction(max : best) reduction(| : any_nonfinite) schedule(static) if (worth_threads(n))
  for (int64_t i = 0; i < n; ++i) {
    const Bits a = static_cast<Bits>(p[i] & kAbsMask);
    const Bits nonfinite = static_cast<Bits>((a & kExpMask) == kExpMask);
    any_nonfinite = static_cast<Bits>(any_nonfinite | nonfinite);
    best = std::max(best, nonfinite ? Bits(0) : a);
  }
  bits_scan s;
  s.amax_bits = best;
  if (any_nonfinite)  // rare: count them and find the first, serially
    for (int64_t i = 0; i < n; ++i)
      if ((p[i] & kExpMask) == kExpMask && s.nonfinite++ == 0) s.first_nonfinite = i;
  return s;
}

}  // namespace

source_scan scan_source(const source_matrix& m) {
  bits_scan b;
  float amax = 0.0f;
  switch (m.dtype) {
    case source_dtype::f32:
      b = scan_bits<uint32_t, 0x7fffffffu, 0x7f800000u>(static_cast<const uint32_t*>(m.data), m.size());
      amax = std::bit_cast<float>(b.amax_bits);
      break;
    case source_dtype::bf16:
      b = scan_bits<uint16_t, 0x7fff, 0x7f80>(static_cast<const uint16_t*>(m.data), m.size());
      amax = bf16_decode(static_cast<uint16_t>(b.amax_bits));
      break;
    case source_dtype::f16:
      b = scan_bits<uint16_t, 0x7fff, 0x7c00>(static_cast<const uint16_t*>(m.data), m.size());
      amax = fp16_decode(static_cast<uint16_t>(b.amax_bits));
      break;
  }
  return {amax, b.nonfinite, b.first_nonfinite};
}

bool apply_nonfinite_policy(const source_matrix& m, const source_scan& scan, nonfinite_policy policy) {
  if (scan.nonfinite == 0) return false;
  if (policy == nonfinite_policy::reject) {
    float value = 0.0f;
    load_f32(m, scan.first_nonfinite, 1, &value, false);
    throw format_error(nonfinite_message(m.shape_view(), scan.first_nonfinite, value, scan.nonfinite));
  }
  return true;
}

}  // namespace mixq::cpu
