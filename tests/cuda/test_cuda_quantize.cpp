// The CUDA kernels return exactly what the scalar references in formats/ (and the CPU kernels) return,
// for every NVFP4 selector and FP8 granularity / selector, from F32, BF16 and F16 sources, on every
// kind of test tensor. Only the host API is called. Without a CUDA device the GPU tests skip.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "formats/minifloat.hpp"
#include "kernels/cpu/quantize.hpp"
#include "kernels/cuda/quantize.hpp"
#include "require_device.hpp"
#include "../sourced_tensor.hpp"
#include "../test_tensors.hpp"

namespace mixq {
namespace {

using testing::all_kinds;
using testing::as_dtype;
using testing::kDtypes;
using testing::sourced;
using testing::test_tensor;
using testing::view_of;

const char* dtype_name(cpu::source_dtype d) {
  return d == cpu::source_dtype::f32 ? "f32" : d == cpu::source_dtype::bf16 ? "bf16" : "f16";
}
const nvfp4_selector kSelectors[] = {nvfp4_selector::max, nvfp4_selector::mse_multiplier, nvfp4_selector::mse_fp8_sweep,
                                     nvfp4_selector::four_over_six, nvfp4_selector::mse_four_over_six};

void expect_same(const nvfp4_weight& gpu, const nvfp4_weight& ref, const std::string& what) {
  EXPECT_EQ(gpu.rows, ref.rows) << what;
  EXPECT_EQ(gpu.cols, ref.cols) << what;
  EXPECT_EQ(std::bit_cast<uint32_t>(gpu.global_scale), std::bit_cast<uint32_t>(ref.global_scale)) << what;
  EXPECT_EQ(gpu.normalizer, ref.normalizer) << what;
  EXPECT_EQ(gpu.block_scales, ref.block_scales) << what;
  EXPECT_EQ(gpu.packed, ref.packed) << what;
}

void expect_same(const fp8_weight& gpu, const fp8_weight& ref, const std::string& what) {
  ASSERT_EQ(gpu.scales.size(), ref.scales.size()) << what;
  for (size_t i = 0; i < ref.scales.size(); ++i)
    EXPECT_EQ(std::bit_cast<uint32_t>(gpu.scales[i]), std::bit_cast<uint32_t>(ref.scales[i])) << what << " row " << i;
  EXPECT_EQ(gpu.codes, ref.codes) << what;
}

// ---- the shared minifloat arithmetic, host against device ----------------------------------------

// Compares the device's E4M3 encode / E2M1 code / E2M1 rounding of the floats with bit patterns
// [first, first + count) with the host's; returns the number of mismatches (reporting the first few).
int64_t minifloat_mismatches(uint32_t first, uint32_t count, bool e4m3, bool e2m1, bool e4m3_hardware = false) {
  int64_t bad = 0;
  constexpr uint32_t kChunk = 1u << 24;
  for (uint64_t done = 0; done < count; done += kChunk) {
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kChunk, count - done));
    const uint32_t base = first + static_cast<uint32_t>(done);
    const cuda::testing::minifloat_probe p = cuda::testing::probe_minifloat(base, n);
    for (uint32_t i = 0; i < n; ++i) {
      const float x = std::bit_cast<float>(base + i);
      const float a = x < 0.0f ? -x : x;
      bool ok = true;
      if (e4m3) ok &= p.e4m3_code[i] == e4m3_encode(x);
      if (e4m3_hardware) ok &= p.e4m3_hardware[i] == e4m3_encode(x);
      if (e2m1)
        ok &= p.e2m1_code[i] == e2m1_magnitude_code(a) &&
              std::bit_cast<uint32_t>(p.e2m1_round[i]) == std::bit_cast<uint32_t>(e2m1_round_magnitude(a));
      if (!ok && bad++ < 5)
        ADD_FAILURE() << "bits 0x" << std::hex << base + i << ": device e4m3 " << int(p.e4m3_code[i]) << " (hardware "
                      << int(p.e4m3_hardware[i]) << ") host "
                      << int(e4m3_encode(x)) << ", device e2m1 " << int(p.e2m1_code[i]) << " host "
                      << int(e2m1_magnitude_code(a));
    }
  }
  return bad;
}

TEST(cuda_kernels, e4m3_decode_matches_host_table) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  const auto p = cuda::testing::probe_minifloat(0, 1);
  ASSERT_EQ(p.e4m3_decode.size(), 256u);
  for (int b = 0; b < 256; ++b) {
    const float host = e4m3_decode_table()[b];
    if (std::isnan(host)) {
      EXPECT_TRUE(std::isnan(p.e4m3_decode[size_t(b)])) << b;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(p.e4m3_decode[size_t(b)]), std::bit_cast<uint32_t>(host)) << b;
    }
  }
}

TEST(cuda_kernels, e4m3_encode_matches_host) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  // Every float from 2^-12 (below half the smallest E4M3 subnormal) to 512 (past saturation), both signs.
  EXPECT_EQ(minifloat_mismatches(0x39800000u, 0x44000000u - 0x39800000u, true, false), 0);
  EXPECT_EQ(minifloat_mismatches(0xb9800000u, 0xc4000000u - 0xb9800000u, true, false), 0);
  // Windows over the rest: zero and float subnormals, the normal boundary, overflow, inf and NaN.
  for (uint32_t start : {0x00000000u, 0x007f0000u, 0x3f7f0000u, 0x7f7f0000u, 0x7fc00000u, 0x80000000u, 0x807f0000u,
                         0xff7f0000u, 0xffbf0000u})
    EXPECT_EQ(minifloat_mismatches(start, 1u << 20, true, false), 0) << std::hex << start;
}

// The FP8 codes kernel converts quotients clear of midpoints in [2^-6, 448) with the hardware's
// instruction; it rounds every finite float from 2^-12 to 512 (both signs, ties included) as e4m3_encode.
TEST(cuda_kernels, e4m3_hardware_conversion_matches_host) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  EXPECT_EQ(minifloat_mismatches(0x39800000u, 0x44000000u - 0x39800000u, false, false, true), 0);
  EXPECT_EQ(minifloat_mismatches(0xb9800000u, 0xc4000000u - 0xb9800000u, false, false, true), 0);
}

TEST(cuda_kernels, e2m1_rounding_matches_host) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  // Every float in [2^-5, 8): all E2M1 thresholds and the saturation, then windows elsewhere.
  EXPECT_EQ(minifloat_mismatches(0x3d000000u, 0x41000000u - 0x3d000000u, false, true), 0);
  for (uint32_t start : {0x00000000u, 0x41000000u, 0x7f7f0000u, 0x7fc00000u, 0xbf000000u})
    EXPECT_EQ(minifloat_mismatches(start, 1u << 20, false, true), 0) << std::hex << start;
}

// ---- NVFP4 -------------------------------------------------------------------------------------

void check_nvfp4(const std::vector<test_tensor>& tensors, const nvfp4_options& base, bool against_cpu_kernel = true) {
  for (const auto& t : tensors)
    for (auto dtype : kDtypes) {
      const sourced s = as_dtype(t, dtype);
      for (auto sel : kSelectors) {
        nvfp4_options o = base;
        o.selector = sel;
        const std::string what = t.name + " " + dtype_name(dtype) + " " + std::string(selector_name(sel));
        const nvfp4_weight gpu = cuda::nvfp4_quantize(s.source, o);
        expect_same(gpu, nvfp4_quantize(view_of(s), o), what + " vs reference");
        if (against_cpu_kernel) expect_same(gpu, cpu::nvfp4_quantize(s.source, o), what + " vs cpu kernel");
      }
    }
}

TEST(cuda_kernels, nvfp4_every_selector_bit_identical) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  check_nvfp4(all_kinds(24, 160, 31), {});
  check_nvfp4(all_kinds(96, 512, 7), {});  // thousands of blocks: many thread blocks
}

TEST(cuda_kernels, nvfp4_tensor_choice_with_ordered_sums) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  // mse_four_over_six normally settles the tensor's normalizer from unordered sums with error bounds;
  // the ordered (reference-order) sums must agree with the reference every time too.
  cuda::testing::force_ordered_error_sum(true);
  for (const auto& t : all_kinds(48, 256, 13))
    for (auto dtype : kDtypes) {
      const sourced s = as_dtype(t, dtype);
      nvfp4_options o;
      o.selector = nvfp4_selector::mse_four_over_six;
      expect_same(cuda::nvfp4_quantize(s.source, o), nvfp4_quantize(view_of(s), o), t.name + " ordered");
    }
  cuda::testing::force_ordered_error_sum(false);
}

TEST(cuda_kernels, nvfp4_options_bit_identical) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  const auto tensors = all_kinds(16, 128, 23);
  nvfp4_options shared;  // a fused sibling's larger amax
  shared.global_amax = 0.75f;
  check_nvfp4(tensors, shared);
  const float mults[] = {0.5f, 0.8f, 1.0f, 1.25f, 2.0f};
  nvfp4_options custom;
  custom.multipliers = mults;
  check_nvfp4(tensors, custom);
}

TEST(cuda_kernels, nvfp4_unaligned_device_copies) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  cuda::testing::misalign_device_copies(true);
  check_nvfp4(all_kinds(8, 96, 17), {}, false);
  cuda::testing::misalign_device_copies(false);
}

TEST(cuda_kernels, nvfp4_nonfinite_zeroed_like_reference) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  auto t = testing::make_tensor(testing::tensor_kind::outliers, 8, 64, 3);
  t.values[5] = INFINITY;
  t.values[77] = -INFINITY;
  t.values[300] = NAN;
  nvfp4_options base;
  base.nonfinite = nonfinite_policy::zero;
  check_nvfp4({t}, base);
}

// ---- FP8 ---------------------------------------------------------------------------------------

void check_fp8(const std::vector<test_tensor>& tensors, const fp8_options& base, bool against_cpu_kernel = true) {
  for (const auto& t : tensors)
    for (auto dtype : kDtypes) {
      const sourced s = as_dtype(t, dtype);
      for (auto gran : {fp8_granularity::per_tensor, fp8_granularity::per_channel})
        for (auto sel : {fp8_selector::max, fp8_selector::mse}) {
          fp8_options o = base;
          o.granularity = gran;
          o.selector = sel;
          const std::string what = t.name + " " + dtype_name(dtype) +
                                   (gran == fp8_granularity::per_tensor ? " per_tensor" : " per_channel") +
                                   (sel == fp8_selector::max ? " max" : " mse");
          const fp8_weight gpu = cuda::fp8_quantize(s.source, o);
          expect_same(gpu, fp8_quantize(view_of(s), o), what + " vs reference");
          if (against_cpu_kernel) expect_same(gpu, cpu::fp8_quantize(s.source, o), what + " vs cpu kernel");
        }
    }
}

TEST(cuda_kernels, fp8_every_granularity_and_selector_bit_identical) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  check_fp8(all_kinds(16, 96, 41), {});
  check_fp8(all_kinds(37, 77, 5), {});    // odd K: groups of 8 straddle rows, scalar tails
  check_fp8(all_kinds(12, 4100, 9), {});  // rows longer than one shared-memory chunk
}

TEST(cuda_kernels, fp8_options_bit_identical) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  const auto tensors = all_kinds(8, 64, 19);
  fp8_options shared;
  shared.amax = 1.5f;
  check_fp8(tensors, shared);
  const float mults[] = {0.6f, 1.0f, 1.1f};
  fp8_options custom;
  custom.multipliers = mults;
  check_fp8(tensors, custom);
}

TEST(cuda_kernels, fp8_unaligned_device_copies) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  cuda::testing::misalign_device_copies(true);
  check_fp8(all_kinds(9, 40, 27), {}, false);
  cuda::testing::misalign_device_copies(false);
}

TEST(cuda_kernels, fp8_nonfinite_zeroed_like_reference) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  auto t = testing::make_tensor(testing::tensor_kind::heavy_tailed, 6, 50, 4);
  t.values[0] = NAN;
  t.values[123] = -INFINITY;
  fp8_options base;
  base.nonfinite = nonfinite_policy::zero;
  check_fp8({t}, base);
}

// ---- errors ------------------------------------------------------------------------------------

TEST(cuda_kernels, nonfinite_errors_name_the_same_place) {
  MIXQ_REQUIRE_CUDA_DEVICE();
  auto t = testing::make_tensor(testing::tensor_kind::normal, 4, 32, 71);
  t.name = "blk.3.ffn";
  t.values[70] = -INFINITY;
  t.values[90] = NAN;
  for (auto dtype : kDtypes) {
    const sourced s = as_dtype(t, dtype);
    std::string ref_msg, gpu_msg, ref8_msg, gpu8_msg;
    try { nvfp4_quantize(view_of(s)); } catch (const format_error& e) { ref_msg = e.what(); }
    try { cuda::nvfp4_quantize(s.source); } catch (const format_error& e) { gpu_msg = e.what(); }
    try { fp8_quantize(view_of(s)); } catch (const format_error& e) { ref8_msg = e.what(); }
    try { cuda::fp8_quantize(s.source); } catch (const format_error& e) { gpu8_msg = e.what(); }
    EXPECT_FALSE(ref_msg.empty());
    EXPECT_EQ(gpu_msg, ref_msg) << dtype_name(dtype);
    EXPECT_EQ(gpu8_msg, ref8_msg) << dtype_name(dtype);
    EXPECT_NE(gpu_msg.find("[2, 6]"), std::string::npos) << gpu_msg;
    EXPECT_NE(gpu_msg.find("2 non-finite values"), std::string::npos) << gpu_msg;
  }
}

// Shapes are checked before any CUDA call, so this runs (and must pass) without a device too.
TEST(cuda_kernels, shape_errors_match_cpu) {
  const std::vector<float> v(24 * 3, 1.0f);
  const cpu::source_matrix odd{v.data(), cpu::source_dtype::f32, 3, 24, "odd"};
  const cpu::source_matrix empty{v.data(), cpu::source_dtype::f32, 0, 16, "empty"};
  for (const auto& m : {odd, empty}) {
    std::string cpu_msg, gpu_msg;
    try { cpu::nvfp4_quantize(m); } catch (const format_error& e) { cpu_msg = e.what(); }
    try { cuda::nvfp4_quantize(m); } catch (const format_error& e) { gpu_msg = e.what(); }
    EXPECT_FALSE(cpu_msg.empty());
    EXPECT_EQ(gpu_msg, cpu_msg);
  }
  std::string cpu_msg, gpu_msg;
  try { cpu::fp8_quantize(empty); } catch (const format_error& e) { cpu_msg = e.what(); }
  try { cuda::fp8_quantize(empty); } catch (const format_error& e) { gpu_msg = e.what(); }
  EXPECT_FALSE(cpu_msg.empty());
  EXPECT_EQ(gpu_msg, cpu_msg);
}

TEST(cuda_kernels, device_query_does_not_throw) { EXPECT_NO_THROW(static_cast<void>(cuda::device_available())); }

}  // namespace
}  // namespace mixq
