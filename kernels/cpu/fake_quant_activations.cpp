#include "kernels/cpu/fake_quant_activations.hpp"

#include <cmath>
#include <cstring>

#include <fmt/format.h>
#include <omp.h>

#include "formats/activation_quant.hpp"
#include "formats/minifloat.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cpu/nvfp4_lanes.hpp"
#include "kernels/cpu/simd_dispatch.hpp"
#include "kernels/cpu/source_matrix.hpp"

namespace mixq::cpu {
namespace {

// Values [first, last) as the reference computes them: for what the lanes leave aside (a NaN, an
// inf in an NVFP4 block, input scales that are not positive normal floats, a range's tail).
void fp8_as_reference(const float* x, float input_scale, float* out, int64_t first, int64_t last) {
  const size_t n = size_t(last - first);
  mixq::fp8_fake_quant_activations({x + first, n}, input_scale, {out + first, n});
}
void nvfp4_as_reference(const float* x, float input_scale, float* out, int64_t first, int64_t last) {
  const size_t n = size_t(last - first);
  mixq::nvfp4_fake_quant_activations({x + first, n}, kNvfp4Block, input_scale, {out + first, n});
}

bool lanes_apply(float input_scale) { return std::isnormal(input_scale) && input_scale > 0.0f; }

// 16 values at a time (every one but NaN: an inf saturates as the reference's codes do).
template <simd_level L>
MIXQ_ALWAYS_INLINE void fp8_values(const float* x, float input_scale, float* out, int64_t first, int64_t last) {
  int64_t i = first;
  for (; i + 16 <= last; i += 16) {
    const lanes::v16u bits = lanes::load_bits(x + i);
    if (lanes::reduce16_bits(lanes::above(bits & 0x7fffffffu, 0x7f800000u)) != 0) {
      fp8_as_reference(x, input_scale, out, i, i + 16);
      continue;
    }
    const lanes::v16f q = lanes::fp8_dequantized(bits, input_scale);
    std::memcpy(out + i, &q, sizeof q);
  }
  fp8_as_reference(x, input_scale, out, i, last);
}

// One 16-block under its scale (> 0): the codes' values, the sign of x < 0 (not of -0) as
// nvfp4_code's.
template <simd_level L>
MIXQ_ALWAYS_INLINE lanes::v16f nvfp4_values(lanes::v16u bits, float scale) {
  // q >= 0, +inf where it overflows: held at 8 (any q from 5 on takes the top level, 6)
  const lanes::v16u q = (lanes::v16u)((lanes::v16f)(bits & 0x7fffffffu) / scale);
  const lanes::v16u codes =
      lanes::e2m1_codes((lanes::v16f)lanes::select(lanes::below(q, 0x41000000u), q, lanes::v16u{} + 0x41000000u));
  const lanes::v16f level =
      L == simd_level::avx512 ? lanes::e2m1_magnitudes(codes) : lanes::e2m1_magnitudes_by_bits(codes);
  return (lanes::v16f)((lanes::v16u)(level * scale) | (lanes::sign_bits(bits) << 28));
}

// 16 blocks at a time: their maxima in one transposed reduction, their scales in lanes (the
// reference's roundings; every max finite), then a block per vector. A group holding an inf or a
// NaN gives its first block to the reference and the groups go on from the next.
template <simd_level L>
MIXQ_ALWAYS_INLINE void nvfp4_blocks(const float* x, float input_scale, float* out, int64_t first, int64_t last) {
  constexpr int64_t kGroup = 16 * kNvfp4Block;
  const float six_is = 6.0f * input_scale;
  int64_t b = first;
  for (; b + kGroup <= last; b += kGroup) {
    lanes::v16u bits[16], magnitude[16], any = {};
    for (int j = 0; j < 16; ++j) {
      bits[j] = lanes::load_bits(x + b + j * kNvfp4Block);
      magnitude[j] = bits[j] & 0x7fffffffu;
      any |= lanes::above(magnitude[j], 0x7f7fffffu);
    }
    if (lanes::reduce16_bits(any) != 0) {
      nvfp4_as_reference(x, input_scale, out, b, b + kNvfp4Block);
      b -= kGroup - kNvfp4Block;  // (the next group from the next block)
      continue;
    }
    const lanes::v16f amax = lanes::reduce16x16(reinterpret_cast<const lanes::v16f*>(magnitude), lanes::max_op{});
    const lanes::v16u ratio = (lanes::v16u)(amax / six_is);  // finite or +inf, not negative: min with 448 by bits
    const lanes::v16f scales =
        lanes::e4m3_decode(lanes::e4m3_encode(
            (lanes::v16f)lanes::select(lanes::below(ratio, 0x43e00000u), ratio, lanes::v16u{} + 0x43e00000u))) *
        input_scale;
    alignas(64) float scale[16];
    std::memcpy(scale, &scales, sizeof scale);
    for (int j = 0; j < 16; ++j) {
      const lanes::v16f value = scale[j] > 0.0f ? nvfp4_values<L>(bits[j], scale[j]) : lanes::v16f{};
      std::memcpy(out + b + j * kNvfp4Block, &value, sizeof value);
    }
  }
  nvfp4_as_reference(x, input_scale, out, b, last);
}

MIXQ_SIMD_KERNEL(void, fp8_range, fp8_values,
                 (const float* x, float input_scale, float* out, int64_t first, int64_t last),
                 (x, input_scale, out, first, last))
MIXQ_SIMD_KERNEL(void, nvfp4_range, nvfp4_blocks,
                 (const float* x, float input_scale, float* out, int64_t first, int64_t last),
                 (x, input_scale, out, first, last))

// range(first, last) over [0, n) in pieces of `unit`, on threads when there is enough work and the
// caller is not already on one (the model runs sequences on threads).
template <class Range>
void over_threads(int64_t n, int64_t unit, const Range& range) {
  const int64_t units = n / unit;
#pragma omp parallel if (worth_threads(n) && !omp_in_parallel())
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    range(units * t / nt * unit, t + 1 == nt ? n : units * (t + 1) / nt * unit);  // (the last takes the rest)
  }
}

}  // namespace

void fp8_fake_quant_activations(std::span<const float> x, float input_scale, std::span<float> out) {
  if (out.size() != x.size()) throw format_error("fp8_fake_quant_activations: input and output sizes differ");
  if (!lanes_apply(input_scale)) return fp8_as_reference(x.data(), input_scale, out.data(), 0, int64_t(x.size()));
  over_threads(int64_t(x.size()), 16, [&](int64_t first, int64_t last) {
    fp8_range(x.data(), input_scale, out.data(), first, last);
  });
}

void nvfp4_fake_quant_activations(std::span<const float> x, int64_t cols, float input_scale, std::span<float> out) {
  if (out.size() != x.size()) throw format_error("nvfp4_fake_quant_activations: input and output sizes differ");
  if (cols <= 0 || cols % kNvfp4Block != 0 || x.size() % size_t(cols) != 0)
    throw format_error(fmt::format("nvfp4_fake_quant_activations: {} values do not form rows of {} (a multiple of 16)",
                                   x.size(), cols));
  if (!lanes_apply(input_scale)) return nvfp4_as_reference(x.data(), input_scale, out.data(), 0, int64_t(x.size()));
  over_threads(int64_t(x.size()), kNvfp4Block, [&](int64_t first, int64_t last) {
    nvfp4_range(x.data(), input_scale, out.data(), first, last);
  });
}

}  // namespace mixq::cpu
