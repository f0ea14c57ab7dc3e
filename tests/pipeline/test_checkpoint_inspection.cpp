// mixq inspect's checks on real and crafted checkpoints: a clean quantized export passes; each
// defect the runtimes trip on (unshared fused scales, zero / NaN block scales, non-positive global
// scales, config disagreeing with tensors, BF16 linears not excluded) is reported by name. The
// rules vLLM enforces (NVFP4 slices under TP, group_size, one format per MoE layer, activation and
// KV scales, compressed-tensors coverage) each get a checkpoint breaking exactly that rule.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "formats/fp8.hpp"
#include "formats/minifloat.hpp"
#include "formats/nvfp4.hpp"
#include "pipeline/export/quant_config.hpp"
#include "pipeline/inspect/checkpoint_inspection.hpp"
#include "pipeline/io/quantized_linear.hpp"
#include "pipeline/io/safetensors_writer.hpp"
#include "pipeline/model/model_spec.hpp"
#include "pipeline/quantize/quantize_run.hpp"
#include "model_test_support.hpp"
#include "../test_tensors.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;

// A small quantized export in ModelOpt's layout: q/k/v NVFP4 sharing weight_scale_2 and
// input_scale, o_proj FP8, lm_head BF16; `mutate` may break it before it is written.
struct export_builder {
  std::vector<std::vector<uint8_t>> storage;
  std::vector<tensor_to_write> tensors;

  std::span<const std::byte> keep(std::span<const uint8_t> bytes) {
    storage.emplace_back(bytes.begin(), bytes.end());
    return std::as_bytes(std::span(storage.back()));
  }
  template <class T>
  std::span<const std::byte> keep_values(const std::vector<T>& v) {
    std::vector<uint8_t> b(v.size() * sizeof(T));
    std::memcpy(b.data(), v.data(), b.size());
    return keep(b);
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

  // A zero block scale, a negative one and a NaN one (-0 counts as zero).
  r = inspect_checkpoint(write_export(t.path / "b", [](export_builder& b, nlohmann::json&) {
    for (auto& x : b.tensors)
      if (x.name == "model.layers.0.self_attn.v_proj.weight_scale") {
        std::vector<uint8_t> s(x.bytes.size(), 0x38);
        s[5] = 0x00;
        s[6] = 0x80;
        s[7] = 0xb8;
        s[9] = 0x7f;
        x.bytes = b.keep(s);
      }
  }));
  EXPECT_TRUE(mentions(r.problems, "v_proj.weight_scale", "2 zero, 1 negative and 1 NaN"))
      << ::testing::PrintToString(r.problems);

  // An NVFP4 linear without its block scales, and packed codes stored as I8.
  r = inspect_checkpoint(write_export(t.path / "f", [](export_builder& b, nlohmann::json&) {
    std::erase_if(b.tensors, [](const tensor_to_write& x) { return x.name == "model.layers.0.self_attn.q_proj.weight_scale"; });
    for (auto& x : b.tensors)
      if (x.name == "model.layers.0.self_attn.v_proj.weight") x.type = dtype::i8;
  }));
  EXPECT_TRUE(mentions(r.problems, "q_proj.weight_scale", "missing")) << ::testing::PrintToString(r.problems);
  EXPECT_TRUE(mentions(r.problems, "v_proj.weight", "is I8")) << ::testing::PrintToString(r.problems);

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
  MIXQ_REQUIRE_SHARED_MODEL(stories, "stories260K");
  MIXQ_REQUIRE_SHARED_MODEL(nemotron, "nemotron-h-tiny");
  const auto llama = inspect_checkpoint(stories);
  EXPECT_TRUE(llama.problems.empty()) << ::testing::PrintToString(llama.problems);
  EXPECT_EQ(llama.parameters, 260032);
  EXPECT_EQ(llama.linears_by_format().at("f32"), 35);  // tied embeddings: no lm_head, and the table is no linear
  const auto hybrid = inspect_checkpoint(nemotron);
  EXPECT_TRUE(hybrid.problems.empty()) << ::testing::PrintToString(hybrid.problems);
  EXPECT_EQ(hybrid.parameters, 508464);
  EXPECT_EQ(hybrid.linears.size(), model_spec_from_file(nemotron).linears.size());
}

// A config.json for an architecture mixq knows that does not parse is a problem (the runtimes refuse
// it too); one for an architecture it does not know leaves the tensors unchecked, and says so.
TEST(inspect, a_broken_config_is_a_problem_and_a_foreign_one_is_not_checked_against) {
  MIXQ_REQUIRE_SHARED_MODEL(stories, "stories260K");
  temp_dir t;
  fs::create_directories(t.path);
  fs::copy_file(fs::path(stories) / "model.safetensors", t.path / "model.safetensors");
  nlohmann::json config = nlohmann::json::parse(std::ifstream(fs::path(stories) / "config.json"));
  EXPECT_TRUE(inspect_checkpoint(stories).config_checked);

  config["hidden_size"] = "64";
  std::ofstream(t.path / "config.json") << config.dump();
  auto r = inspect_checkpoint(t.path);
  EXPECT_TRUE(mentions(r.problems, "not valid for its architecture", "hidden_size")) << ::testing::PrintToString(r.problems);
  EXPECT_FALSE(r.config_checked);

  config["hidden_size"] = 64;
  config["architectures"] = {"GPT2LMHeadModel"};
  config["model_type"] = "gpt2";
  std::ofstream(t.path / "config.json") << config.dump();
  r = inspect_checkpoint(t.path);
  EXPECT_TRUE(r.problems.empty()) << ::testing::PrintToString(r.problems);
  EXPECT_TRUE(mentions(r.notes, "not understood", "unsupported architecture")) << ::testing::PrintToString(r.notes);
  EXPECT_FALSE(r.config_checked);
}

// A small export written through the exporter's own encoders and configs, in either layout, for the
// rules that need particular shapes or formats; `mutate` breaks it before it is written. No
// config.json model: inspect finds the linears by shape.
struct crafted_layer {
  std::string module;
  format_id format;
  int64_t rows, cols;
};
struct crafted_export {
  std::vector<encoded_tensor> tensors;
  nlohmann::json hf_quant_config, quantization_config;  // null when the layout has none

  void erase(const std::string& name) {
    std::erase_if(tensors, [&](const encoded_tensor& t) { return t.name == name; });
  }
  encoded_tensor& at(const std::string& name) {
    for (auto& t : tensors)
      if (t.name == name) return t;
    throw std::out_of_range(name);
  }
};

template <class T>
std::vector<std::byte> bytes_of(const std::vector<T>& v) {
  std::vector<std::byte> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

fs::path write_crafted(const fs::path& dir, const std::vector<crafted_layer>& layers, export_layout layout,
                       kv_cache_format kv = kv_cache_format::none,
                       const std::function<void(crafted_export&)>& mutate = {}) {
  crafted_export e;
  layer_formats formats;
  uint32_t seed = 10;
  for (const auto& l : layers) {
    formats.emplace_back(l.module, l.format);
    const auto w = testing::make_tensor(testing::tensor_kind::normal, l.rows, l.cols, seed++);
    if (l.format == format_id::bf16) {
      std::vector<uint16_t> v;
      for (float x : w.values) v.push_back(bf16_encode(x));
      e.tensors.push_back({l.module + ".weight", dtype::bf16, {l.rows, l.cols}, bytes_of(v)});
      continue;
    }
    quantized_linear q{l.module, l.format, {}, {}, 0.01f};
    if (l.format == format_id::fp8_per_tensor) {
      q.fp8 = fp8_quantize(w.view());
    } else {
      nvfp4_options o;
      o.global_amax = 16.0f;  // one global scale for every layer: fused siblings share it
      q.nvfp4 = nvfp4_quantize(w.view(), o);
    }
    for (auto& t : encode_quantized_linear(q, layout)) e.tensors.push_back(std::move(t));
  }
  if (kv == kv_cache_format::fp8)
    for (const auto& l : layers)
      if (l.module.ends_with(".k_proj")) {
        const std::string attention = l.module.substr(0, l.module.size() - 7);
        const auto [k_name, v_name] = kv_scale_names(attention, layout);
        e.tensors.push_back({k_name, dtype::f32, {}, bytes_of(std::vector<float>{0.05f})});
        e.tensors.push_back({v_name, dtype::f32, {}, bytes_of(std::vector<float>{0.05f})});
      }
  const quant_configs c = make_quant_configs(formats, kv, layout, "test");
  e.hf_quant_config = nlohmann::json::parse(c.hf_quant_config.dump());
  e.quantization_config = nlohmann::json::parse(c.quantization_config.dump());
  if (mutate) mutate(e);

  fs::create_directories(dir);
  std::vector<tensor_to_write> tensors;
  for (const auto& t : e.tensors) tensors.push_back({t.name, t.type, t.shape, t.bytes});
  write_safetensors(dir / "model.safetensors", tensors);
  std::ofstream(dir / "config.json") << nlohmann::json{{"quantization_config", e.quantization_config}}.dump(2);
  if (!e.hf_quant_config.is_null()) std::ofstream(dir / "hf_quant_config.json") << e.hf_quant_config.dump(2);
  return dir;
}

const std::string kAttn = "model.layers.0.self_attn.";
const std::string kMlp = "model.layers.0.mlp.";

// q/k/v NVFP4, o_proj FP8, lm_head BF16.
std::vector<crafted_layer> attention_layers() {
  return {{kAttn + "q_proj", format_id::nvfp4, 32, 64},
          {kAttn + "k_proj", format_id::nvfp4, 16, 64},
          {kAttn + "v_proj", format_id::nvfp4, 16, 64},
          {kAttn + "o_proj", format_id::fp8_per_tensor, 64, 32},
          {"lm_head", format_id::bf16, 8, 64}};
}

std::string all(const std::vector<std::string>& msgs) { return ::testing::PrintToString(msgs); }

TEST(inspect, nvfp4_slices_under_tensor_parallelism) {
  temp_dir t;
  const std::vector<crafted_layer> layers = {
      {kAttn + "q_proj", format_id::nvfp4, 48, 64},  {kAttn + "k_proj", format_id::nvfp4, 16, 64},
      {kAttn + "v_proj", format_id::nvfp4, 16, 64},  {kAttn + "o_proj", format_id::nvfp4, 64, 96},
      {kMlp + "gate_proj", format_id::nvfp4, 96, 64}, {kMlp + "up_proj", format_id::nvfp4, 96, 64},
      {kMlp + "down_proj", format_id::nvfp4, 64, 96}};
  const auto dir = write_crafted(t.path / "tp", layers, export_layout::modelopt);
  for (int tp : {1, 2}) {
    const auto r = inspect_checkpoint(dir, {.tensor_parallel = tp});
    EXPECT_TRUE(r.problems.empty()) << "tp " << tp << ": " << all(r.problems);
  }
  // Row-parallel down_proj and o_proj: K = 96 in 4 slices of 24.
  auto r = inspect_checkpoint(dir, {.tensor_parallel = 4});
  EXPECT_TRUE(mentions(r.problems, kMlp + "down_proj: row-parallel", "slices of 24")) << all(r.problems);
  EXPECT_TRUE(mentions(r.problems, kAttn + "o_proj: row-parallel", "slices of 24")) << all(r.problems);
  EXPECT_EQ(r.problems.size(), 2u) << all(r.problems);
  // Column-parallel k_proj: N = 16 does not split in 3; q_proj (N = 48) and down_proj (K = 96) do.
  r = inspect_checkpoint(dir, {.tensor_parallel = 3});
  EXPECT_TRUE(mentions(r.problems, kAttn + "k_proj: column-parallel", "N = 16 does not split")) << all(r.problems);
  EXPECT_FALSE(mentions(r.problems, kAttn + "q_proj", "")) << all(r.problems);
  EXPECT_FALSE(mentions(r.problems, kMlp + "down_proj", "")) << all(r.problems);
}

TEST(inspect, nvfp4_group_size_is_16) {
  temp_dir t;
  auto r = inspect_checkpoint(write_crafted(t.path / "a", attention_layers(), export_layout::modelopt,
                                            kv_cache_format::none, [](crafted_export& e) {
                                              e.hf_quant_config["quantization"]["quantized_layers"][kAttn + "q_proj"]
                                                               ["group_size"] = 32;
                                              e.quantization_config["quantized_layers"] =
                                                  e.hf_quant_config["quantization"]["quantized_layers"];
                                            }));
  EXPECT_TRUE(mentions(r.problems, "quantized_layers[" + kAttn + "q_proj]", "group_size is 32")) << all(r.problems);

  auto nvfp4_only = attention_layers();
  nvfp4_only[3].format = format_id::nvfp4;
  r = inspect_checkpoint(write_crafted(t.path / "b", nvfp4_only, export_layout::modelopt, kv_cache_format::none,
                                       [](crafted_export& e) { e.hf_quant_config["quantization"].erase("group_size"); }));
  EXPECT_TRUE(mentions(r.problems, "quant_algo NVFP4", "needs group_size")) << all(r.problems);

  r = inspect_checkpoint(write_crafted(t.path / "c", nvfp4_only, export_layout::compressed_tensors,
                                       kv_cache_format::none, [](crafted_export& e) {
                                         e.quantization_config["config_groups"]["group_0"]["weights"]["group_size"] = 32;
                                       }));
  EXPECT_TRUE(mentions(r.problems, "config_groups.group_0.weights", "group_size is 32")) << all(r.problems);
}

TEST(inspect, mixed_precision_needs_one_format_per_moe_layer_and_fused_layer) {
  temp_dir t;
  std::vector<crafted_layer> experts;
  for (int e = 0; e < 2; ++e)
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      const bool down = std::string(proj) == "down_proj";
      experts.push_back({fmt::format("{}experts.{}.{}", kMlp, e, proj),
                         e == 1 && down ? format_id::fp8_per_tensor : format_id::nvfp4, down ? 64 : 32, down ? 32 : 64});
    }
  auto r = inspect_checkpoint(write_crafted(t.path / "a", experts, export_layout::modelopt));
  EXPECT_TRUE(mentions(r.problems, "MoE layer " + kMlp + "experts", kMlp + "experts.1.down_proj is fp8"))
      << all(r.problems);
  EXPECT_EQ(r.problems.size(), 1u) << all(r.problems);

  auto layers = attention_layers();
  layers[2].format = format_id::fp8_per_tensor;  // v_proj
  r = inspect_checkpoint(write_crafted(t.path / "b", layers, export_layout::modelopt));
  EXPECT_TRUE(mentions(r.problems, "fused group", kAttn + "v_proj is fp8")) << all(r.problems);

  r = inspect_checkpoint(write_crafted(t.path / "c", attention_layers(), export_layout::modelopt, kv_cache_format::none,
                                       [](crafted_export& e) {
                                         e.quantization_config["quantized_layers"][kAttn + "o_proj"]["quant_algo"] = "NVFP4";
                                       }));
  EXPECT_TRUE(mentions(r.problems, "config.json quantization_config", "quantized_layers differs")) << all(r.problems);
}

TEST(inspect, static_activation_formats_need_their_input_scale) {
  temp_dir t;
  auto r = inspect_checkpoint(write_crafted(t.path / "a", attention_layers(), export_layout::modelopt,
                                            kv_cache_format::none,
                                            [](crafted_export& e) { e.erase(kAttn + "o_proj.input_scale"); }));
  EXPECT_TRUE(mentions(r.problems, kAttn + "o_proj.input_scale is missing", "declares FP8")) << all(r.problems);

  r = inspect_checkpoint(write_crafted(t.path / "b", attention_layers(), export_layout::compressed_tensors,
                                       kv_cache_format::none, [](crafted_export& e) {
                                         for (const char* p : {"q_proj", "k_proj", "v_proj"})
                                           e.erase(kAttn + p + ".input_global_scale");
                                       }));
  EXPECT_TRUE(mentions(r.problems, kAttn + "q_proj.input_global_scale is missing", "declares NVFP4")) << all(r.problems);

  // Weight-only NVFP4 has no activation scale by design.
  auto w4a16 = attention_layers();
  for (int i = 0; i < 3; ++i) w4a16[size_t(i)].format = format_id::nvfp4_w4a16;
  r = inspect_checkpoint(write_crafted(t.path / "c", w4a16, export_layout::modelopt));
  EXPECT_TRUE(r.problems.empty()) << all(r.problems);
}

TEST(inspect, fp8_kv_cache_needs_every_attention_scale) {
  temp_dir t;
  auto r = inspect_checkpoint(write_crafted(t.path / "a", attention_layers(), export_layout::modelopt,
                                            kv_cache_format::fp8,
                                            [](crafted_export& e) { e.erase(kAttn + "v_proj.v_scale"); }));
  EXPECT_TRUE(mentions(r.problems, "attention model.layers.0.self_attn", kAttn + "v_proj.v_scale is missing"))
      << all(r.problems);
  EXPECT_EQ(r.kv_cache_quant_algo, "FP8");

  r = inspect_checkpoint(write_crafted(t.path / "b", attention_layers(), export_layout::compressed_tensors,
                                       kv_cache_format::fp8,
                                       [](crafted_export& e) { e.at(kAttn + "k_scale").bytes = bytes_of(std::vector<float>{-1.0f}); }));
  EXPECT_TRUE(mentions(r.problems, kAttn + "k_scale", "finite and positive")) << all(r.problems);

  r = inspect_checkpoint(write_crafted(t.path / "c", attention_layers(), export_layout::modelopt, kv_cache_format::fp8,
                                       [](crafted_export& e) {
                                         e.hf_quant_config["quantization"]["kv_cache_quant_algo"] = nullptr;
                                         e.quantization_config["kv_cache_scheme"] = nullptr;
                                       }));
  EXPECT_TRUE(r.problems.empty()) << all(r.problems);
  EXPECT_TRUE(mentions(r.notes, "2 KV-cache scale tensors", "quantizes no KV cache")) << all(r.notes);
}

// The compressed-tensors group holding `module`.
std::string ct_group_of(const nlohmann::json& qc, const std::string& module) {
  for (const auto& [name, g] : qc["config_groups"].items())
    for (const auto& target : g["targets"])
      if (target == module) return name;
  return "";
}

TEST(inspect, compressed_tensors_layout) {
  temp_dir t;
  auto r = inspect_checkpoint(write_crafted(t.path / "ok", attention_layers(), export_layout::compressed_tensors,
                                            kv_cache_format::fp8));
  EXPECT_TRUE(r.problems.empty()) << all(r.problems);
  EXPECT_EQ(r.layout, "compressed-tensors");
  EXPECT_EQ(r.quant_algo, "mixed-precision");
  EXPECT_EQ(r.linears_by_format().at("nvfp4"), 3);
  EXPECT_EQ(r.linears_by_format().at("fp8"), 1);
  EXPECT_EQ(r.linears_by_format().at("bf16"), 1);
  EXPECT_NEAR(r.effective_bits, (4096 * 4.5 + 2048 * 8 + 512 * 16) / (4096.0 + 2048 + 512), 1e-12);

  // Regex targets, matched from the start of the name, cover q/k/v as the exact names did.
  r = inspect_checkpoint(write_crafted(t.path / "re", attention_layers(), export_layout::compressed_tensors,
                                       kv_cache_format::none, [](crafted_export& e) {
                                         auto& qc = e.quantization_config;
                                         qc["config_groups"][ct_group_of(qc, kAttn + "q_proj")]["targets"] = {
                                             "re:.*self_attn\\.[qkv]_proj$"};
                                         qc["ignore"] = {"re:lm_"};
                                       }));
  EXPECT_TRUE(r.problems.empty()) << all(r.problems);

  // A regex that does not compile, and the linears it was to cover.
  r = inspect_checkpoint(write_crafted(t.path / "bad-re", attention_layers(), export_layout::compressed_tensors,
                                       kv_cache_format::none, [](crafted_export& e) {
                                         auto& qc = e.quantization_config;
                                         qc["config_groups"][ct_group_of(qc, kAttn + "q_proj")]["targets"] = {"re:(q"};
                                       }));
  EXPECT_TRUE(mentions(r.problems, "'re:(q' is not a valid regex", ".targets")) << all(r.problems);
  EXPECT_TRUE(mentions(r.problems, kAttn + "k_proj is NVFP4", "no config_groups target covers it")) << all(r.problems);

  // Two groups claim o_proj; lm_head is BF16 but not ignored; q_proj is quantized but ignored.
  r = inspect_checkpoint(write_crafted(t.path / "cover", attention_layers(), export_layout::compressed_tensors,
                                       kv_cache_format::none, [](crafted_export& e) {
                                         auto& qc = e.quantization_config;
                                         qc["config_groups"][ct_group_of(qc, kAttn + "q_proj")]["targets"].push_back(
                                             kAttn + "o_proj");
                                         qc["ignore"] = {kAttn + "q_proj"};
                                       }));
  EXPECT_TRUE(mentions(r.problems, kAttn + "o_proj is covered by config_groups.", "exactly one")) << all(r.problems);
  EXPECT_TRUE(mentions(r.problems, "lm_head is unquantized (bf16) but not in ignore", "")) << all(r.problems);
  EXPECT_TRUE(mentions(r.problems, kAttn + "q_proj is NVFP4 but matches ignore", "")) << all(r.problems);

  // Reciprocal global scales must be finite and positive too; fused shards share one format.
  r = inspect_checkpoint(write_crafted(t.path / "scale", attention_layers(), export_layout::compressed_tensors,
                                       kv_cache_format::none, [](crafted_export& e) {
                                         e.at(kAttn + "k_proj.weight_global_scale").bytes =
                                             bytes_of(std::vector<float>{std::numeric_limits<float>::infinity()});
                                       }));
  EXPECT_TRUE(mentions(r.problems, kAttn + "k_proj.weight_global_scale", "finite and positive")) << all(r.problems);
  auto layers = attention_layers();
  layers[1].format = format_id::fp8_per_tensor;  // k_proj
  r = inspect_checkpoint(write_crafted(t.path / "fused", layers, export_layout::compressed_tensors));
  EXPECT_TRUE(mentions(r.problems, "fused group", kAttn + "k_proj is fp8")) << all(r.problems);
}

// A real `mixq quantize` of stories260K passes in both layouts, at --tp 1 and --tp 2 (K = 64 splits
// into 32s; down_proj's K = 172 is no multiple of 16, so the recipe keeps it BF16).
TEST(inspect, real_export_passes_in_both_layouts) {
  MIXQ_REQUIRE_SHARED_MODEL(stories, "stories260K");
  temp_dir t;
  for (const char* layout : {"modelopt", "compressed-tensors"}) {
    quantize_request rq;
    rq.model = stories;
    rq.out = t.path / layout;
    rq.rcp = parse_recipe(fmt::format(R"(name: inspect_test
calibration:
  samples: 4
  seq_len: 32
quantize:
  default: bf16
  rules:
    - match: ["*self_attn.*_proj", "*.mlp.*_proj"]
      format: nvfp4
kv_cache: fp8
export:
  layout: {}
)",
                                      layout),
                          "inspect_test");
    rq.producer_version = "test";
    run_quantize(rq);
    for (int tp : {1, 2}) {
      const auto r = inspect_checkpoint(rq.out, {.tensor_parallel = tp});
      EXPECT_TRUE(r.problems.empty()) << layout << " tp " << tp << ": " << all(r.problems);
      EXPECT_EQ(r.layout, layout);
      EXPECT_EQ(r.kv_cache_quant_algo, "FP8");
      EXPECT_EQ(r.linears.size(), 35u);
      EXPECT_GT(r.linears_by_format().at("nvfp4"), 0);
    }
  }
}

}  // namespace
}  // namespace mixq
