// E2M1 rounding by integer arithmetic on the float's bits: the same codes as
// formats' e2m1_magnitude_code (RNE, saturating), in about half the vector instructions of its
// seven comparisons. Exhaustively checked against it in tests/kernels.
#pragma once

#include <bit>
#include <cstdint>

namespace mixq::cpu {

// Magnitude code 0..7 of a >= 0.
inline uint32_t e2m1_code_by_bits(float a) {
  // Below 1 the grid is {0, .5, 1}: RNE(2a) by the FPU (adding 2^23 leaves an integer).
  const uint32_t small = std::bit_cast<uint32_t>(a * 2.0f + 8388608.0f) - 0x4b000000u;
  // From 1 up, E2M1 is a float with one mantissa bit: RNE of the 23-bit mantissa to 1 bit;
  // exponent 127 (a in [1, 2)) maps to codes 2, 3.
  const uint32_t u = std::bit_cast<uint32_t>(a);
  const uint32_t r = u + 0x1fffffu + ((u >> 22) & 1u);
  const uint32_t large = (r >> 22) - 252u;
  const uint32_t code = a < 1.0f ? small : large;
  return code < 7u ? code : 7u;  // saturate (beyond 6, and inf)
}

// The E2M1 magnitude of a code 0..7, {0, .5, 1, 1.5, 2, 3, 4, 6}, without a table lookup.
inline float e2m1_magnitude_of(uint32_t c) {
  const float f = float(c);
  return 0.5f * f + 0.5f * (c > 4u ? f - 4.0f : 0.0f) + (c > 6u ? 1.0f : 0.0f);
}

}  // namespace mixq::cpu
