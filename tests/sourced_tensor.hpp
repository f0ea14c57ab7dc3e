// A test tensor as a BF16 / F16 / F32 kernel source, with the fp32 values the references see.
#pragma once

#include <cstdint>
#include <vector>

#include "formats/minifloat.hpp"
#include "kernels/cpu/source_matrix.hpp"
#include "test_tensors.hpp"

namespace mixq::testing {

// The same values in each source dtype; the fp32 reference sees the widened values.
struct sourced {
  cpu::source_matrix source;
  std::vector<float> widened;
  std::vector<uint16_t> half_bits;
};

inline sourced as_dtype(const test_tensor& t, cpu::source_dtype dtype) {
  sourced s;
  s.widened = t.values;
  if (dtype != cpu::source_dtype::f32) {
    s.half_bits.resize(t.values.size());
    for (size_t i = 0; i < t.values.size(); ++i) {
      s.half_bits[i] = dtype == cpu::source_dtype::bf16 ? bf16_encode(t.values[i]) : fp16_encode(t.values[i]);
      s.widened[i] = dtype == cpu::source_dtype::bf16 ? bf16_decode(s.half_bits[i]) : fp16_decode(s.half_bits[i]);
    }
  }
  s.source = {dtype == cpu::source_dtype::f32 ? static_cast<const void*>(s.widened.data()) : s.half_bits.data(),
              dtype, t.rows, t.cols, t.name};
  return s;
}

inline weight_view view_of(const sourced& s) { return {s.widened.data(), s.source.rows, s.source.cols, s.source.name}; }

inline const cpu::source_dtype kDtypes[] = {cpu::source_dtype::f32, cpu::source_dtype::bf16, cpu::source_dtype::f16};

}  // namespace mixq::testing
