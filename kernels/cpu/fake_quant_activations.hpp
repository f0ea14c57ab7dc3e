// Fake quantization of a quantized linear's input on the CPU: the model's hot path under W4A4 and
// W8A8 recipes. Loops written for the vectorizer, cloned per instruction set, over threads where
// the caller is not already on one; bit for bit the reference in formats/activation_quant.cpp
// (tests/kernels check every level, with NaN, infinities, signed zeros and subnormals).
#pragma once

#include <cstdint>
#include <span>

namespace mixq::cpu {

// x and out hold rows × cols values (row-major; may be the same buffer).
void fp8_fake_quant_activations(std::span<const float> x, float input_scale, std::span<float> out);
void nvfp4_fake_quant_activations(std::span<const float> x, int64_t cols, float input_scale, std::span<float> out);

}  // namespace mixq::cpu
