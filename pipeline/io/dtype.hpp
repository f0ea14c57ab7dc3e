// Element types of checkpoint tensors, named as safetensors names them.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace mixq {

// Declaration order = safetensors' Dtype enum (increasing alignment), which its writer sorts by.
enum class dtype : uint8_t {
  boolean, f4, f6_e2m3, f6_e3m2, u8, i8, f8_e5m2, f8_e4m3, f8_e8m0, f8_e4m3fnuz, f8_e5m2fnuz,
  i16, u16, f16, bf16, i32, u32, f32, c64, f64, i64, u64,
};

std::string_view dtype_name(dtype t);            // "BF16", "F8_E4M3", ...
std::optional<dtype> parse_dtype(std::string_view name);
int dtype_bits(dtype t);                         // 4 for F4, 6 for F6_*, 8·bytes otherwise

}  // namespace mixq
