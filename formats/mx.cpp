#include "formats/mx.hpp"

#include <cmath>

#include <fmt/format.h>

#include "formats/minifloat.hpp"
#include "formats/packing.hpp"
#include "formats/tensor_amax.hpp"

namespace mixq {
namespace {

int element_emax(format_id format) { return format == format_id::mxfp4 ? 2 : 8; }

uint8_t encode_element(float v, format_id format) {
  return format == format_id::mxfp4 ? e2m1_t::from_float(v).bits : e4m3_encode(v);
}

float decode_element(uint8_t bits, format_id format) {
  return format == format_id::mxfp4 ? e2m1_t{bits}.to_float() : e4m3_decode_table()[bits];
}

}  // namespace

int mx_shared_exponent(float amax, format_id format) {
  if (amax == 0.0f) return -127;
  return ue8m0_t::from_exponent(std::ilogb(amax) - element_emax(format)).exponent();
}

uint8_t mx_quantize_block(const float* x, format_id format, uint8_t* codes) {
  float amax = 0.0f;
  for (int i = 0; i < kMxBlock; ++i) amax = std::fmax(amax, std::fabs(x[i]));
  const int e = mx_shared_exponent(amax, format);
  // Scaling by a power of two (2^-e is a float for e in [-127, 127]) rounds exactly as ldexp does.
  const float inv = std::ldexp(1.0f, -e);
  for (int i = 0; i < kMxBlock; ++i) codes[i] = encode_element(x[i] * inv, format);
  return ue8m0_t::from_exponent(e).bits;
}

void mx_store_elements(mx_weight& q, code_bytes& codes) {
  if (q.format == format_id::mxfp8) {
    q.elements = std::move(codes);
    return;
  }
  q.elements.resize(codes.size() / 2);
  for (size_t i = 0; i < q.elements.size(); ++i) q.elements[i] = nibbles_pack(codes[2 * i], codes[2 * i + 1]);
}

mx_weight mx_quantize(const weight_view& w_in, format_id format, nonfinite_policy nonfinite) {
  if (format != format_id::mxfp4 && format != format_id::mxfp8)
    throw format_error(fmt::format("mx_quantize: {} is not an MX format", traits_of(format).name));
  if (auto why = format_cannot_hold(format, w_in.rows, w_in.cols))
    throw format_error(fmt::format("tensor '{}': {}", w_in.name, *why));
  std::vector<float> cleaned;
  const weight_view w = finite_or_zeroed(w_in, nonfinite, cleaned);

  mx_weight q;
  q.format = format;
  q.rows = w.rows;
  q.cols = w.cols;
  q.scales.resize(size_t(w.size() / kMxBlock));
  code_bytes codes(size_t(w.size()));
  for (int64_t b = 0; b < w.size() / kMxBlock; ++b)
    q.scales[size_t(b)] = mx_quantize_block(w.data + b * kMxBlock, format, codes.data() + b * kMxBlock);
  mx_store_elements(q, codes);
  return q;
}

void mx_dequantize(const mx_weight& q, std::span<float> out) {
  const int64_t n = q.rows * q.cols;
  if (int64_t(out.size()) != n) throw format_error(fmt::format("mx_dequantize: output holds {} values, need {}", out.size(), n));
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t bits = q.format == format_id::mxfp4 ? nibble_at(q.elements.data(), i) : q.elements[size_t(i)];
    out[size_t(i)] = decode_element(bits, q.format) * ue8m0_t{q.scales[size_t(i / kMxBlock)]}.to_float();
  }
}

}  // namespace mixq
