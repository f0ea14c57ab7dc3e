// A weight as it sits in a checkpoint: [rows, cols] of BF16 / F16 / F32, row-major, not copied.
// The CPU kernels read it in place and widen each block to fp32 as they go.
#pragma once

#include <cstdint>
#include <string_view>

#include "formats/minifloat.hpp"
#include "formats/weight_view.hpp"

namespace mixq::cpu {

enum class source_dtype : uint8_t { f32, bf16, f16 };

struct source_matrix {
  const void* data = nullptr;
  source_dtype dtype = source_dtype::f32;
  int64_t rows = 0, cols = 0;
  std::string_view name = "<unnamed>";

  int64_t size() const { return rows * cols; }
  weight_view shape_view() const { return {nullptr, rows, cols, name}; }
};

inline source_matrix from_f32(const weight_view& w) { return {w.data, source_dtype::f32, w.rows, w.cols, w.name}; }

const float* f16_decode_table();  // 65536 entries

// An F16 bit pattern as a type of its own, so that overloads tell F16 from BF16's uint16_t.
struct f16_bits {
  uint16_t bits;
};

// Widens n values starting at flat index i to fp32 (non-finite values become 0 when zero_nonfinite).
inline void load_f32(const source_matrix& m, int64_t i, int n, float* dst, bool zero_nonfinite) {
  switch (m.dtype) {
    case source_dtype::f32: {
      const float* s = static_cast<const float*>(m.data) + i;
      for (int k = 0; k < n; ++k) dst[k] = s[k];
      break;
    }
    case source_dtype::bf16: {
      const uint16_t* s = static_cast<const uint16_t*>(m.data) + i;
      for (int k = 0; k < n; ++k) dst[k] = bf16_decode(s[k]);
      break;
    }
    case source_dtype::f16: {
      const uint16_t* s = static_cast<const uint16_t*>(m.data) + i;
      const float* t = f16_decode_table();
      for (int k = 0; k < n; ++k) dst[k] = t[s[k]];
      break;
    }
  }
  if (zero_nonfinite)
    for (int k = 0; k < n; ++k) dst[k] = std::isfinite(dst[k]) ? dst[k] : 0.0f;
}

// Whether `work` value-operations are worth waking the OpenMP team for: below ~256k, starting
// threads costs more than it saves (and a busy core makes a team much slower than one thread).
inline bool worth_threads(int64_t work) { return work >= (int64_t(1) << 18); }

// One parallel pass over the tensor: max |x| over its finite values and the non-finite count.
struct source_scan {
  float amax = 0.0f;
  int64_t nonfinite = 0;
  int64_t first_nonfinite = -1;
};
source_scan scan_source(const source_matrix& m);

// Applies the NaN / Inf policy to a scan: throws format_error (naming tensor and first index) under
// `reject`; returns whether loads must zero non-finite values.
bool apply_nonfinite_policy(const source_matrix& m, const source_scan& scan, nonfinite_policy policy);

}  // namespace mixq::cpu
