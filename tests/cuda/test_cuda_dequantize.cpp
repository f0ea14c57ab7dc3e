// The CUDA dequantizers return exactly what formats/ nvfp4_dequantize / fp8_dequantize return: for
// every nibble under every E4M3 block-scale byte (NaN and negative scales included), every FP8 code
// byte per tensor and per channel, weights the quantizers produced, and misaligned device copies.
// Size mismatches are errors. Without a CUDA device the GPU tests skip.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cuda/dequantize.hpp"
#include "require_device.hpp"
#include "../test_tensors.hpp"

namespace mixq {
namespace {

// Bit-identical, any NaN matching any NaN (the kernels' NaN is the canonical one).
int64_t mismatches(const std::vector<float>& gpu, const std::vector<float>& ref, const std::string& what) {
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const bool same = std::isnan(ref[i]) ? std::isnan(gpu[i])
                                         : std::bit_cast<uint32_t>(gpu[i]) == std::bit_cast<uint32_t>(ref[i]);
    if (!same && bad++ < 5) ADD_FAILURE() << what << " value " << i << ": gpu " << gpu[i] << " reference " << ref[i];
  }
  return bad;
}

void expect_nvfp4_same(const nvfp4_weight& q, const std::string& what) {
  std::vector<float> ref(size_t(q.rows * q.cols)), gpu(ref.size());
  nvfp4_dequantize(q, ref);
  cuda::nvfp4_dequantize(q, gpu);
  EXPECT_EQ(mismatches(gpu, ref, what), 0);
}

void expect_fp8_same(const fp8_weight& q, const std::string& what) {
  std::vector<float> ref(size_t(q.rows * q.cols)), gpu(ref.size());
  fp8_dequantize(q, ref);
  cuda::fp8_dequantize(q, gpu);
  EXPECT_EQ(mismatches(gpu, ref, what), 0);
}

// Every packed byte (two nibbles) under every block-scale byte: 256 blocks of 16 values, block b
// scaled by E4M3 byte b, its 8 bytes b, b+1, ..., b+7 (mod 256).
nvfp4_weight every_nibble_and_scale(float global_scale) {
  nvfp4_weight q;
  q.rows = 16;
  q.cols = 256;
  q.global_scale = global_scale;
  q.block_scales.resize(256);
  q.packed.resize(256 * 8);
  for (int b = 0; b < 256; ++b) {
    q.block_scales[size_t(b)] = uint8_t(b);
    for (int k = 0; k < 8; ++k) q.packed[size_t(b * 8 + k)] = uint8_t(b + 37 * k);
  }
  return q;
}

TEST(cuda_dequantize, nvfp4_every_nibble_under_every_scale_byte) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  for (float g : {1.0f, 0.0123f, 3.0e-30f, -0.5f}) expect_nvfp4_same(every_nibble_and_scale(g), "global " + std::to_string(g));
}

TEST(cuda_dequantize, nvfp4_quantized_weights) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  for (const auto& t : testing::all_kinds(24, 160, 3))
    for (auto sel : {nvfp4_selector::max, nvfp4_selector::mse_four_over_six}) {
      nvfp4_options o;
      o.selector = sel;
      expect_nvfp4_same(nvfp4_quantize(t.view(), o), t.name + " " + std::string(selector_name(sel)));
    }
}

fp8_weight every_code(int64_t rows, int64_t cols, bool per_channel) {
  fp8_weight q;
  q.rows = rows;
  q.cols = cols;
  q.codes.resize(size_t(rows * cols));
  for (size_t i = 0; i < q.codes.size(); ++i) q.codes[i] = uint8_t(i * 7 + i / 256);
  if (per_channel)
    for (int64_t r = 0; r < rows; ++r) q.scales.push_back(std::ldexp(1.0f + 0.0137f * float(r), int(r % 40) - 20));
  else
    q.scales = {0.0021f};
  return q;
}

TEST(cuda_dequantize, fp8_every_code_per_tensor_and_per_channel) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  for (bool per_channel : {false, true}) {
    expect_fp8_same(every_code(64, 256, per_channel), per_channel ? "per channel" : "per tensor");
    expect_fp8_same(every_code(37, 77, per_channel), per_channel ? "odd per channel" : "odd per tensor");
  }
}

TEST(cuda_dequantize, fp8_quantized_weights) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  for (const auto& t : testing::all_kinds(16, 96, 41))
    for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel}) {
      fp8_options o;
      o.granularity = gran;
      o.selector = fp8_selector::mse;
      expect_fp8_same(fp8_quantize(t.view(), o), t.name);
    }
}

TEST(cuda_dequantize, unaligned_device_copies) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  cuda::testing::misalign_device_copies(true);
  expect_nvfp4_same(every_nibble_and_scale(0.25f), "misaligned nvfp4");
  expect_fp8_same(every_code(37, 77, true), "misaligned fp8 per channel");
  expect_fp8_same(every_code(64, 256, false), "misaligned fp8 per tensor");
  cuda::testing::misalign_device_copies(false);
}

// Checked before any device work, so these run without a GPU too.
TEST(cuda_dequantize, size_mismatches_name_the_part) {
  nvfp4_weight q = every_nibble_and_scale(1.0f);
  std::vector<float> out(size_t(q.rows * q.cols) - 1);
  try {
    cuda::nvfp4_dequantize(q, out);
    ADD_FAILURE() << "short output accepted";
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("output"), std::string::npos) << e.what();
  }
  out.resize(out.size() + 1);
  q.block_scales.pop_back();
  try {
    cuda::nvfp4_dequantize(q, out);
    ADD_FAILURE() << "short block_scales accepted";
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("block_scales"), std::string::npos) << e.what();
  }
  fp8_weight f = every_code(8, 16, true);
  f.scales.pop_back();
  std::vector<float> fout(8 * 16);
  try {
    cuda::fp8_dequantize(f, fout);
    ADD_FAILURE() << "7 scales for 8 rows accepted";
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("scales"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mixq
