// Two 4-bit codes per byte, the even element in the low nibble (ModelOpt / vLLM / OCP MX order).
#pragma once

#include <cstdint>

namespace mixq {

inline uint8_t nibbles_pack(uint8_t even, uint8_t odd) { return static_cast<uint8_t>((even & 0xF) | (odd << 4)); }
inline uint8_t nibble_at(const uint8_t* packed, int64_t i) {
  const uint8_t b = packed[i >> 1];
  return (i & 1) ? static_cast<uint8_t>(b >> 4) : static_cast<uint8_t>(b & 0xF);
}

}  // namespace mixq
