#include "formats/nf4.hpp"

#include <array>
#include <cmath>

#include <fmt/format.h>

#include "formats/format_traits.hpp"
#include "formats/minifloat.hpp"
#include "formats/packing.hpp"
#include "formats/tensor_amax.hpp"

namespace mixq {
namespace {

// bitsandbytes' NF4 table (functional.py, create_normal_map with offset 0.9677).
constexpr std::array<float, 16> kCodebook = {
    -1.0f,                 -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f,  0.16093020141124725f,  0.24611230194568634f,  0.33791524171829224f,
    0.44070982933044434f,  0.5626170039176941f,   0.7229568362236023f,   1.0f};

constexpr std::array<float, 15> midpoints() {
  std::array<float, 15> m{};
  for (size_t i = 0; i < 15; ++i) m[i] = (kCodebook[i] + kCodebook[i + 1]) * 0.5f;
  return m;
}
constexpr std::array<float, 15> kMidpoints = midpoints();

constexpr float kFp16Max = 65504.0f;

}  // namespace

std::span<const float> nf4_codebook() { return kCodebook; }

uint8_t nf4_code(float v) {
  uint8_t code = 0;
  for (float m : kMidpoints) code = static_cast<uint8_t>(code + (v > m));
  return code;
}

uint16_t nf4_quantize_block(const float* x, uint8_t* dst) {
  float amax = 0.0f;
  for (int i = 0; i < kNf4Block; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const uint16_t scale_bits = fp16_encode(std::fmin(amax, kFp16Max));  // FP16 has no room above
  const float scale = fp16_decode(scale_bits);
  for (int i = 0; i < kNf4Block; i += 2) {
    const uint8_t even = scale > 0.0f ? nf4_code(x[i] / scale) : 7;
    const uint8_t odd = scale > 0.0f ? nf4_code(x[i + 1] / scale) : 7;
    dst[i / 2] = nibbles_pack(even, odd);
  }
  return scale_bits;
}

nf4_weight nf4_quantize(const weight_view& w_in, nonfinite_policy nonfinite) {
  if (auto why = format_cannot_hold(format_id::nf4, w_in.rows, w_in.cols))
    throw format_error(fmt::format("tensor '{}': {}", w_in.name, *why));
  std::vector<float> cleaned;
  const weight_view w = finite_or_zeroed(w_in, nonfinite, cleaned);

  nf4_weight q;
  q.rows = w.rows;
  q.cols = w.cols;
  q.packed.resize(size_t(w.size() / 2));
  q.scales.resize(size_t(w.size() / kNf4Block));
  for (int64_t b = 0; b < w.size() / kNf4Block; ++b)
    q.scales[size_t(b)] = nf4_quantize_block(w.data + b * kNf4Block, q.packed.data() + b * (kNf4Block / 2));
  return q;
}

void nf4_dequantize(const nf4_weight& q, std::span<float> out) {
  const int64_t n = q.rows * q.cols;
  if (int64_t(out.size()) != n) throw format_error(fmt::format("nf4_dequantize: output holds {} values, need {}", out.size(), n));
  for (int64_t i = 0; i < n; ++i)
    out[size_t(i)] = kCodebook[nibble_at(q.packed.data(), i)] * fp16_decode(q.scales[size_t(i / kNf4Block)]);
}

}  // namespace mixq
