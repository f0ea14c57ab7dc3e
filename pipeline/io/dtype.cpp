#include "pipeline/io/dtype.hpp"

#include <array>

namespace mixq {
namespace {

struct dtype_row {
  dtype type;
  std::string_view name;
  int bits;
};

constexpr std::array<dtype_row, 22> kDtypes = {{
    {dtype::boolean, "BOOL", 8},     {dtype::f4, "F4", 4},
    {dtype::f6_e2m3, "F6_E2M3", 6},  {dtype::f6_e3m2, "F6_E3M2", 6},
    {dtype::u8, "U8", 8},            {dtype::i8, "I8", 8},
    {dtype::f8_e5m2, "F8_E5M2", 8},  {dtype::f8_e4m3, "F8_E4M3", 8},
    {dtype::f8_e8m0, "F8_E8M0", 8},  {dtype::f8_e4m3fnuz, "F8_E4M3FNUZ", 8},
    {dtype::f8_e5m2fnuz, "F8_E5M2FNUZ", 8}, {dtype::i16, "I16", 16},
    {dtype::u16, "U16", 16},         {dtype::f16, "F16", 16},
    {dtype::bf16, "BF16", 16},       {dtype::i32, "I32", 32},
    {dtype::u32, "U32", 32},         {dtype::f32, "F32", 32},
    {dtype::c64, "C64", 64},         {dtype::f64, "F64", 64},
    {dtype::i64, "I64", 64},         {dtype::u64, "U64", 64},
}};

}  // namespace

std::string_view dtype_name(dtype t) { return kDtypes[size_t(t)].name; }
int dtype_bits(dtype t) { return kDtypes[size_t(t)].bits; }

std::optional<dtype> parse_dtype(std::string_view name) {
  for (const auto& row : kDtypes)
    if (row.name == name) return row.type;
  return std::nullopt;
}

}  // namespace mixq
