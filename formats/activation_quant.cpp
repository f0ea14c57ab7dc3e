#include "formats/activation_quant.hpp"

#include <cmath>

#include <fmt/format.h>

#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"
#include "formats/nvfp4.hpp"

namespace mixq {

float fp8_input_scale(float act_amax) { return fp8_scale_for_amax(act_amax); }
float nvfp4_input_scale(float act_amax) { return nvfp4_global_scale(act_amax, kNvfp4Normalizer); }

void fp8_fake_quant_activations(std::span<const float> x, float input_scale, std::span<float> out) {
  if (out.size() != x.size()) throw format_error("fp8_fake_quant_activations: input and output sizes differ");
  for (size_t i = 0; i < x.size(); ++i) out[i] = e4m3_decode_table()[fp8_code(x[i], input_scale)] * input_scale;
}

void nvfp4_fake_quant_activations(std::span<const float> x, int64_t cols, float input_scale, std::span<float> out) {
  if (out.size() != x.size()) throw format_error("nvfp4_fake_quant_activations: input and output sizes differ");
  if (cols <= 0 || cols % kNvfp4Block != 0 || x.size() % size_t(cols) != 0)
    throw format_error(fmt::format("nvfp4_fake_quant_activations: {} values do not form rows of {} (a multiple of 16)",
                                   x.size(), cols));
  const float six_is = 6.0f * input_scale;
  for (size_t b = 0; b < x.size(); b += kNvfp4Block) {
    float amax = 0.0f;
    for (int i = 0; i < kNvfp4Block; ++i) amax = std::fmax(amax, std::fabs(x[b + i]));
    const float sf = e4m3_decode_table()[e4m3_encode(std::fmin(amax / six_is, 448.0f))];
    const float scale = sf * input_scale;
    for (int i = 0; i < kNvfp4Block; ++i) {
      const float v = x[b + i];
      out[b + i] = scale > 0.0f ? e2m1_t{nvfp4_code(v, scale)}.to_float() * scale : 0.0f;
    }
  }
}

}  // namespace mixq
