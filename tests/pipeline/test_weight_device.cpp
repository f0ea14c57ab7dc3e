// mixq quantize --device: the names and their errors, and (on a machine with a GPU) the CUDA kernels
// quantizing a checkpoint's weights to the same bytes as the CPU kernels, for every NVFP4 selector
// and FP8 per tensor, with fused siblings' shared scales.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <unistd.h>

#include "pipeline/model/model_spec.hpp"
#include "pipeline/quantize/quantize_weights.hpp"
#include "pipeline/recipe/recipe.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"

namespace mixq {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

TEST(weight_device, names_resolve_or_say_why_not) {
  EXPECT_EQ(resolve_weight_device("cpu"), weight_device::cpu);
  EXPECT_EQ(describe(weight_device::cpu), "cpu");
  try {
    static_cast<void>(resolve_weight_device("gpu"));
    ADD_FAILURE() << "'gpu' accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("cpu, cuda or auto"));
  }
  const weight_device automatic = resolve_weight_device("auto");  // never an error
  try {
    EXPECT_EQ(resolve_weight_device("cuda"), automatic);  // cuda runs where auto picks it
    EXPECT_EQ(automatic, weight_device::cuda);
    EXPECT_THAT(describe(weight_device::cuda), HasSubstr("cuda ("));
  } catch (const std::invalid_argument& e) {  // no GPU, or no CUDA build: auto falls back to the CPU
    EXPECT_EQ(automatic, weight_device::cpu);
    EXPECT_THAT(e.what(), HasSubstr("use --device cpu"));
  }
}

TEST(weight_device, cuda_quantizes_a_checkpoint_to_the_cpu_bytes) {
  if (resolve_weight_device("auto") != weight_device::cuda) GTEST_SKIP() << "no CUDA GPU (or no CUDA build)";
  const fs::path dir = fs::temp_directory_path() / ("mixq-weight-device-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  synth_options so;
  so.arch = synth_arch::llama;
  so.out = dir;
  synth_checkpoint(so);
  const checkpoint ckpt = checkpoint::open(dir);
  const model_spec spec = model_spec_from_file(dir);
  for (const char* rule : {"format: nvfp4\n      weights: max", "format: nvfp4\n      weights: mse",
                           "format: nvfp4\n      weights: four_over_six", "format: nvfp4\n      weights: mse+four_over_six", "format: nvfp4\n      weights: mse_multiplier",
                           "format: fp8\n      weights: mse"}) {
    const recipe r = parse_recipe(std::string("name: t\nquantize:\n  rules:\n    - match: lm_head\n      format: bf16\n"
                                              "    - match: \"*\"\n      ") + rule + "\n",
                                  "t.yaml");
    const quant_plan plan = plan_quantization(r, spec);
    const quantized_weights cpu_q = quantize_weights(ckpt, spec, plan, kv_cache_format::none, {}, {}, weight_device::cpu);
    const quantized_weights gpu_q = quantize_weights(ckpt, spec, plan, kv_cache_format::none, {}, {}, weight_device::cuda);
    ASSERT_EQ(gpu_q.linears.size(), cpu_q.linears.size()) << rule;
    ASSERT_GT(cpu_q.linears.size(), 0u) << rule;
    for (size_t i = 0; i < cpu_q.linears.size(); ++i) {
      const quantized_linear &g = gpu_q.linears[i], &c = cpu_q.linears[i];
      EXPECT_EQ(g.nvfp4.packed, c.nvfp4.packed) << rule << " " << c.module;
      EXPECT_EQ(g.nvfp4.block_scales, c.nvfp4.block_scales) << rule << " " << c.module;
      EXPECT_EQ(g.nvfp4.global_scale, c.nvfp4.global_scale) << rule << " " << c.module;
      EXPECT_EQ(g.fp8.codes, c.fp8.codes) << rule << " " << c.module;
      EXPECT_EQ(g.fp8.scales, c.fp8.scales) << rule << " " << c.module;
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mixq
