// Fake quantization of activations (the inputs of quantized linears), as the runtimes do it.
//   FP8:   static per-tensor input_scale = amax / 448;  x_q = E4M3(x / input_scale) · input_scale
//   NVFP4: static per-tensor input_scale = amax / (6·448); per 16-block of each row a dynamic scale
//          sf = E4M3(min(block_amax / (6·input_scale), 448)) (no lower clamp: a tiny block may get
//          sf = 0 and read as zeros, as on hardware); x_q = E2M1(x / (sf·input_scale)) · sf·input_scale.
//          Values beyond the calibrated amax saturate at 6·448·input_scale.
// Spec: shared/reference/autoquantize-numerics.md §2.4, §2.5.
#pragma once

#include <cstdint>
#include <span>

namespace mixq {

float fp8_input_scale(float act_amax);
float nvfp4_input_scale(float act_amax);

// x and out hold rows × cols values (row-major; may alias).
void fp8_fake_quant_activations(std::span<const float> x, float input_scale, std::span<float> out);
void nvfp4_fake_quant_activations(std::span<const float> x, int64_t cols, float input_scale, std::span<float> out);

}  // namespace mixq
