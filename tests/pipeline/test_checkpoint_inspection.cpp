// mixq inspect's checks on real and crafted checkpoints: a clean quantized export passes; each
// defect the runtimes trip on (unshared fused scales, zero / NaN block scales, non-positive global
// scales, config disagreeing with tensors, BF16 linears not excluded) is reported by name.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"
#include "formats/nvfp4.hpp"
#include "pipeline/inspect/checkpoint_inspection.hpp"
#include "pipeline/io/safetensors_writer.hpp"
#include "../test_tensors.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;

// A small quantized export in ModelOpt's layout: q/k/v NVFP4 sharing weight_scale_2 and
// input_scale, o_proj FP8, lm_head BF16; `mutate` may break it before it is written.
struct export_builder {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<tensor_to_write> tensors;

  std::span<const std::byte> keep(std::vector<uint8_t> bytes) {
    storage.push_back(std::move(bytes));
    return std::as_bytes(std::span(storage.back()));
  }
  template <class T>
  std::span<const std::byte> keep_values(const std::vector<T>& v) {
    std::vector<uint8_t> b(v.size() * sizeof(T));
    std::memcpy(b.data(), v.data(), b.size());
    return keep(std::move(b));
  }
  void add(std::string name, dtype t, std::vector<int64_t> shape, std::span<const std::byte> bytes) {
    tensors.push_back({std::move(name), t, std::move(shape), bytes});
  }
};

fs::path write_export(const fs::path& dir, const std::function<void(export_builder&, nlohmann::json&)>& mutate = {}) {
  fs::create_directories(dir);
  export_builder b;
  b.storage.reserve(64);
  const auto q = testing::make_tensor(testing::tensor_kind::normal, 32, 64, 1);
  const auto k = testing::make_tensor(testing::tensor_kind::heavy_tailed, 16, 64, 2);
  const auto v = testing::make_tensor(testing::tensor_kind::outliers, 16, 64, 3);
  float shared_amax = 0;
  for (const auto* t : {&q, &k, &v})
    for (float x : t->values) shared_amax = std::max(shared_amax, std::fabs(x));
  const float input_scale = 0.01f;
  for (const auto& [proj, t] : {std::pair{"q_proj", &q}, {"k_proj", &k}, {"v_proj", &v}}) {
    nvfp4_options o;
    o.global_amax = shared_amax;
    const nvfp4_weight w = nvfp4_quantize(t->view(), o);
    const std::string m = std::string("model.layers.0.self_attn.") + proj;
    b.add(m + ".weight", dtype::u8, {w.rows, w.cols / 2}, b.keep(w.packed));
    b.add(m + ".weight_scale", dtype::f8_e4m3, {w.rows, w.cols / 16}, b.keep(w.block_scales));
    b.add(m + ".weight_scale_2", dtype::f32, {}, b.keep_values(std::vector<float>{w.global_scale}));
    b.add(m + ".input_scale", dtype::f32, {}, b.keep_values(std::vector<float>{input_scale}));
  }
  const auto o_proj = testing::make_tensor(testing::tensor_kind::normal, 64, 32, 4);
  const fp8_weight f = fp8_quantize(o_proj.view());
  b.add("model.layers.0.self_attn.o_proj.weight", dtype::f8_e4m3, {64, 32}, b.keep(f.codes));
  b.add("model.layers.0.self_attn.o_proj.weight_scale", dtype::f32, {}, b.keep_values(f.scales));
  b.add("model.layers.0.self_attn.o_proj.input_scale", dtype::f32, {}, b.keep_values(std::vector<float>{0.02f}));
  std::vector<uint16_t> head(8 * 64, bf16_encode(0.01f));
  b.add("lm_head.weight", dtype::bf16, {8, 64}, b.keep_values(head));

  nlohmann::json hf = {{"producer", {{"name", "mixq"}}},
                       {"quantization",
                        {{"quant_algo", "MIXED_PRECISION"},
                         {"kv_cache_quant_algo", nullptr},
                         {"quantized_layers",
                          {{"model.layers.0.self_attn.q_proj", {{"quant_algo", "NVFP4"}, {"group_size", 16}}},
                           {"model.layers.0.self_attn.k_proj", {{"quant_algo", "NVFP4"}, {"group_size", 16}}},
                           {"model.layers.0.self_attn.v_proj", {{"quant_algo", "NVFP4"}, {"group_size", 16}}},
                           {"model.layers.0.self_attn.o_proj", {{"quant_algo", "FP8"}}}}},
                         {"exclude_modules", {"lm_head"}}}}};
  if (mutate) mutate(b, hf);
  write_safetensors(dir / "model.safetensors", b.tensors);
  std::ofstream(dir / "hf_quant_config.json") << hf.dump(2);
  return dir;
}

struct temp_dir {
  fs::path path = fs::temp_directory_path() / ("mixq-inspect-" + std::to_string(::getpid()));
  ~temp_dir() { fs::remove_all(path); }
};

bool mentions(const std::vector<std::string>& msgs, const std::string& a, const std::string& b) {
  for (const auto& m : msgs)
    if (m.find(a) != std::string::npos && m.find(b) != std::string::npos) return true;
  return false;
}

TEST(inspect, clean_mixed_precision_export_passes) {
  temp_dir t;
  const auto r = inspect_checkpoint(write_export(t.path / "ok"));
  EXPECT_TRUE(r.problems.empty()) << (r.problems.empty() ? "" : r.problems[0]);
  EXPECT_EQ(r.quant_algo, "MIXED_PRECISION");
  const auto by = r.linears_by_format();
  EXPECT_EQ(by.at("nvfp4"), 3);
  EXPECT_EQ(by.at("fp8"), 1);
  EXPECT_EQ(by.at("bf16"), 1);
  // (32+16+16)·64 NVFP4 at 4.5, 64·32 FP8 at 8, 8·64 BF16 at 16
  const double expect = (4096 * 4.5 + 2048 * 8 + 512 * 16) / (4096.0 + 2048 + 512);
  EXPECT_NEAR(r.effective_bits, expect, 1e-12);
  EXPECT_EQ(r.parameters, 4096 + 2048 + 512);
}

TEST(inspect, each_runtime_defect_is_named) {
  temp_dir t;
  // k_proj gets its own weight_scale_2: the fused QKV GEMM would mis-scale it.
  auto r = inspect_checkpoint(write_export(t.path / "a", [](export_builder& b, nlohmann::json&) {
    for (auto& x : b.tensors)
      if (x.name == "model.layers.0.self_attn.k_proj.weight_scale_2") x.bytes = b.keep_values(std::vector<float>{1e-3f});
  }));
  EXPECT_TRUE(mentions(r.problems, "k_proj.weight_scale_2", "fused group")) << ::testing::PrintToString(r.problems);

  // A zero block scale and a NaN one.
  r = inspect_checkpoint(write_export(t.path / "b", [](export_builder& b, nlohmann::json&) {
    for (auto& x : b.tensors)
      if (x.name == "model.layers.0.self_attn.v_proj.weight_scale") {
        std::vector<uint8_t> s(x.bytes.size(), 0x38);
        s[5] = 0x00;
        s[9] = 0x7f;
        x.bytes = b.keep(s);
      }
  }));
  EXPECT_TRUE(mentions(r.problems, "v_proj.weight_scale", "1 zero and 1 NaN")) << ::testing::PrintToString(r.problems);

  // A non-positive input_scale.
  r = inspect_checkpoint(write_export(t.path / "c", [](export_builder& b, nlohmann::json&) {
    for (auto& x : b.tensors)
      if (x.name == "model.layers.0.self_attn.o_proj.input_scale") x.bytes = b.keep_values(std::vector<float>{0.0f});
  }));
  EXPECT_TRUE(mentions(r.problems, "o_proj.input_scale", "finite and positive")) << ::testing::PrintToString(r.problems);

  // The config says FP8 for a layer stored as NVFP4, and forgets another.
  r = inspect_checkpoint(write_export(t.path / "d", [](export_builder&, nlohmann::json& hf) {
    hf["quantization"]["quantized_layers"]["model.layers.0.self_attn.q_proj"] = {{"quant_algo", "FP8"}};
    hf["quantization"]["quantized_layers"].erase("model.layers.0.self_attn.o_proj");
  }));
  EXPECT_TRUE(mentions(r.problems, "q_proj", "says FP8 but the tensors are NVFP4")) << ::testing::PrintToString(r.problems);
  EXPECT_TRUE(mentions(r.problems, "o_proj", "not in quantized_layers")) << ::testing::PrintToString(r.problems);

  // Single-format export whose BF16 lm_head is not excluded.
  r = inspect_checkpoint(write_export(t.path / "e", [](export_builder& b, nlohmann::json& hf) {
    std::erase_if(b.tensors, [](const tensor_to_write& x) { return x.name.find("o_proj") != std::string::npos; });
    hf["quantization"] = {{"quant_algo", "NVFP4"}, {"group_size", 16}, {"exclude_modules", nlohmann::json::array()}};
  }));
  EXPECT_TRUE(mentions(r.problems, "lm_head", "not in exclude_modules")) << ::testing::PrintToString(r.problems);

  // Quantized tensors without hf_quant_config.json.
  fs::remove(t.path / "e" / "hf_quant_config.json");
  r = inspect_checkpoint(t.path / "e");
  EXPECT_TRUE(mentions(r.problems, "no hf_quant_config.json", "")) << ::testing::PrintToString(r.problems);
}

TEST(inspect, real_checkpoints_match_their_configs) {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  const fs::path shared = fs::path(src ? src : ".") / ".." / "shared" / "models";
  if (!fs::exists(shared)) {
    const char* ci = std::getenv("CI");
    if (ci && std::string(ci) == "true") FAIL() << shared << " is missing";
    GTEST_SKIP() << shared << " is absent";
  }
  const auto llama = inspect_checkpoint(shared / "stories260K");
  EXPECT_TRUE(llama.problems.empty()) << ::testing::PrintToString(llama.problems);
  EXPECT_EQ(llama.parameters, 260032);
  EXPECT_EQ(llama.linears_by_format().at("f32"), 36);
  const auto hybrid = inspect_checkpoint(shared / "nemotron-h-tiny");
  EXPECT_TRUE(hybrid.problems.empty()) << ::testing::PrintToString(hybrid.problems);
  EXPECT_EQ(hybrid.parameters, 508464);
}

}  // namespace
}  // namespace mixq
