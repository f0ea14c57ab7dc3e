// The CPU kernels on the real checkpoints' weights, read in place as the pipeline reads them
// (stories260K in F32, nemotron-h-tiny in BF16): every NVFP4 selector and every FP8 granularity and
// selector, at every SIMD level, bit for bit the scalar reference of formats/ (which the golden
// tests hold to ModelOpt). Trained weights reach cases random ones rarely do: near ties between
// scale candidates, exact quotients, blocks of equal values.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cpu/quantize.hpp"
#include "kernels/cpu/simd_dispatch.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "tests/pipeline/model_test_support.hpp"

namespace mixq {
namespace {

// The checkpoint's 2-D weights whose rows hold whole NVFP4 blocks, with their values widened for
// the reference.
struct weight {
  cpu::source_matrix source;
  std::vector<float> values;
  weight_view view() const { return {values.data(), source.rows, source.cols, source.name}; }
};

std::vector<weight> block_weights(const checkpoint& ckpt) {
  std::vector<weight> out;
  for (const auto& e : ckpt.tensors()) {
    const auto m = checkpoint::as_matrix(e);
    if (!m || m->cols % kNvfp4Block != 0) continue;
    weight w{*m, std::vector<float>(size_t(m->size()))};
    cpu::load_f32(*m, 0, int(m->size()), w.values.data(), false);
    out.push_back(std::move(w));
  }
  return out;
}

// f(level) at every SIMD level this machine has, the kernels limited to it; the top one after.
template <class F>
void at_every_simd_level(F f) {
  for (auto level : {cpu::simd_level::baseline, cpu::simd_level::avx2, cpu::simd_level::avx512}) {
    if (level > cpu::cpu_simd_level()) continue;
    cpu::limit_simd_level(level);
    f(level);
  }
  cpu::limit_simd_level(cpu::cpu_simd_level());
}

void expect_kernels_match_reference(const std::filesystem::path& dir, size_t least_weights) {
  const checkpoint ckpt = checkpoint::open(dir);
  const std::vector<weight> weights = block_weights(ckpt);
  ASSERT_GE(weights.size(), least_weights) << dir;
  const nvfp4_selector selectors[] = {nvfp4_selector::max, nvfp4_selector::four_over_six,
                                      nvfp4_selector::mse_fp8_sweep, nvfp4_selector::mse_multiplier,
                                      nvfp4_selector::mse_four_over_six};
  for (const weight& w : weights) {
    for (auto sel : selectors) {
      nvfp4_options o;
      o.selector = sel;
      const nvfp4_weight ref = nvfp4_quantize(w.view(), o);
      at_every_simd_level([&](cpu::simd_level level) {
        const nvfp4_weight fast = cpu::nvfp4_quantize(w.source, o);
        EXPECT_EQ(fast.global_scale, ref.global_scale) << w.source.name << " " << int(sel) << " " << int(level);
        EXPECT_EQ(fast.block_scales, ref.block_scales) << w.source.name << " " << int(sel) << " " << int(level);
        EXPECT_EQ(fast.packed, ref.packed) << w.source.name << " " << int(sel) << " " << int(level);
      });
    }
    for (auto granularity : {fp8_granularity::per_tensor, fp8_granularity::per_channel})
      for (auto sel : {fp8_selector::max, fp8_selector::mse}) {
        fp8_options o;
        o.granularity = granularity;
        o.selector = sel;
        const fp8_weight ref = fp8_quantize(w.view(), o);
        at_every_simd_level([&](cpu::simd_level level) {
          const fp8_weight fast = cpu::fp8_quantize(w.source, o);
          EXPECT_EQ(fast.scales, ref.scales) << w.source.name << " " << int(granularity) << " " << int(sel) << " " << int(level);
          EXPECT_EQ(fast.codes, ref.codes) << w.source.name << " " << int(granularity) << " " << int(sel) << " " << int(level);
        });
      }
  }
}

TEST(kernels_on_checkpoints, stories260k_f32_weights_bit_identical) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "stories260K");
  expect_kernels_match_reference(dir, 30);
}

TEST(kernels_on_checkpoints, nemotron_h_tiny_bf16_weights_bit_identical) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "nemotron-h-tiny");
  expect_kernels_match_reference(dir, 10);
}

}  // namespace
}  // namespace mixq
