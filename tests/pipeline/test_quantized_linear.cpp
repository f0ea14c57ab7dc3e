// The on-disk forms of a quantized linear (ModelOpt and compressed-tensors): names, dtypes and shapes
// as hf-export-format.md §2.4 / §4 lists them, nibble order, and decode(encode(q)) giving exactly the
// dequantized weight computed here from the formula.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "formats/minifloat.hpp"
#include "pipeline/export/quant_config.hpp"
#include "pipeline/io/quantized_linear.hpp"
#include "tests/test_tensors.hpp"

namespace mixq {
namespace {

using ::testing::HasSubstr;

struct stored_set {
  std::map<std::string, encoded_tensor> tensors;
  explicit stored_set(std::vector<encoded_tensor> v) {
    for (auto& t : v) tensors.emplace(t.name, std::move(t));
  }
  stored_tensor_lookup lookup() const {
    return [this](const std::string& name) -> std::optional<stored_tensor> {
      const auto it = tensors.find(name);
      if (it == tensors.end()) return std::nullopt;
      return stored_tensor{it->second.type, it->second.shape, it->second.bytes};
    };
  }
  const encoded_tensor& at(const std::string& name) const { return tensors.at(name); }
  float scalar(const std::string& name) const {
    float v;
    std::memcpy(&v, at(name).bytes.data(), 4);
    return v;
  }
};

quantized_linear make_nvfp4(format_id f, const testing::test_tensor& t) {
  quantized_linear q;
  q.module = "model.layers.0.mlp.up_proj";
  q.format = f;
  q.nvfp4 = nvfp4_quantize(t.view(), {});
  q.input_scale = f == format_id::nvfp4 ? 0.0123f : 0.0f;
  return q;
}

// W = e2m1(code) * (e4m3(block scale) * weight_scale_2), from the stored bytes: the same product the
// quantizer divided by.
std::vector<float> dequant_by_formula(const std::vector<std::byte>& packed, const std::vector<std::byte>& scales,
                                      float ws2, int64_t rows, int64_t cols) {
  std::vector<float> w(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const uint8_t byte = uint8_t(packed[size_t(r * cols / 2 + c / 2)]);
      const uint8_t code = c % 2 == 0 ? byte & 0xF : byte >> 4;  // low nibble = even element
      const float mag = kNvfp4Values[code & 7];
      const float s = e4m3_decode(uint8_t(scales[size_t(r * (cols / 16) + c / 16)]));
      w[size_t(r * cols + c)] = (code & 8 ? -mag : mag) * (s * ws2);
    }
  return w;
}

TEST(quantized_linear, modelopt_nvfp4_names_dtypes_shapes_and_values) {
  const auto t = testing::make_tensor(testing::tensor_kind::outliers, 24, 64, 7);
  for (format_id f : {format_id::nvfp4, format_id::nvfp4_w4a16}) {
    const quantized_linear q = make_nvfp4(f, t);
    const stored_set s(encode_quantized_linear(q, export_layout::modelopt));
    const std::string m = q.module;
    EXPECT_EQ(s.tensors.size(), f == format_id::nvfp4 ? 4u : 3u);
    EXPECT_EQ(s.at(m + ".weight").type, dtype::u8);
    EXPECT_EQ(s.at(m + ".weight").shape, (std::vector<int64_t>{24, 32}));
    EXPECT_EQ(s.at(m + ".weight_scale").type, dtype::f8_e4m3);
    EXPECT_EQ(s.at(m + ".weight_scale").shape, (std::vector<int64_t>{24, 4}));
    EXPECT_EQ(s.at(m + ".weight_scale_2").shape, std::vector<int64_t>{});
    EXPECT_EQ(s.scalar(m + ".weight_scale_2"), q.nvfp4.global_scale);
    if (f == format_id::nvfp4) { EXPECT_EQ(s.scalar(m + ".input_scale"), 0.0123f); }

    const auto d = decode_quantized_linear(m, 24, 64, s.lookup());
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->format, f);
    EXPECT_EQ(d->input_scale, f == format_id::nvfp4 ? 0.0123f : 0.0f);
    EXPECT_EQ(d->w, dequant_by_formula(s.at(m + ".weight").bytes, s.at(m + ".weight_scale").bytes,
                                       q.nvfp4.global_scale, 24, 64));
  }
}

TEST(quantized_linear, compressed_tensors_stores_reciprocal_global_scales) {
  const auto t = testing::make_tensor(testing::tensor_kind::heavy_tailed, 16, 32, 3);
  const quantized_linear q = make_nvfp4(format_id::nvfp4, t);
  const stored_set s(encode_quantized_linear(q, export_layout::compressed_tensors));
  const std::string m = q.module;
  EXPECT_EQ(s.tensors.count(m + ".weight"), 0u);
  EXPECT_EQ(s.at(m + ".weight_packed").type, dtype::u8);
  EXPECT_EQ(s.at(m + ".weight_global_scale").shape, std::vector<int64_t>{1});
  EXPECT_EQ(s.scalar(m + ".weight_global_scale"), 1.0f / q.nvfp4.global_scale);
  EXPECT_EQ(s.scalar(m + ".input_global_scale"), 1.0f / 0.0123f);
  const auto d = decode_quantized_linear(m, 16, 32, s.lookup());
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->format, format_id::nvfp4);
  EXPECT_NEAR(d->input_scale, 0.0123f, 0.0123f * 1e-6f);
  const std::vector<float> want = dequant_by_formula(s.at(m + ".weight_packed").bytes, s.at(m + ".weight_scale").bytes,
                                                     1.0f / s.scalar(m + ".weight_global_scale"), 16, 32);
  EXPECT_EQ(d->w, want);
}

// compressed-tensors' reciprocal scales: the fitted amax is the least at or above the given one
// whose scales a reader recovers exactly, for every normalizer asked; ModelOpt's layout keeps it.
TEST(quantized_linear, amax_for_layout_fits_the_reciprocal_scales) {
  const float both[] = {kNvfp4Normalizer, kNvfp4FourOverSixNormalizer};
  const auto survives = [](float s) { return 1.0f / (1.0f / s) == s; };
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> exponent(-30.0f, 30.0f);
  int moved = 0;
  for (int i = 0; i < 20000; ++i) {
    const float amax = std::exp2(exponent(rng));
    EXPECT_EQ(amax_for_layout(amax, export_layout::modelopt, both), amax);
    const float fitted = amax_for_layout(amax, export_layout::compressed_tensors, both);
    ASSERT_GE(fitted, amax);
    for (const float n : both) ASSERT_TRUE(survives(nvfp4_global_scale(fitted, n))) << amax << " " << n;
    for (float a = amax; a < fitted; a = std::nextafter(a, INFINITY))  // the least such
      EXPECT_FALSE(survives(nvfp4_global_scale(a, both[0])) && survives(nvfp4_global_scale(a, both[1])));
    moved += fitted != amax;
  }
  EXPECT_GT(moved, 20000 / 10);  // (a reciprocal that fails to come back is common: the test can fail)
  EXPECT_EQ(amax_for_layout(0.0f, export_layout::compressed_tensors, both), 0.0f);
}

TEST(quantized_linear, fp8_both_layouts) {
  const auto t = testing::make_tensor(testing::tensor_kind::normal, 8, 48, 5);
  quantized_linear q;
  q.module = "backbone.layers.0.mixer.in_proj";
  q.format = format_id::fp8_per_tensor;
  q.fp8 = fp8_quantize(t.view(), {});
  q.input_scale = 0.5f;
  for (export_layout layout : {export_layout::modelopt, export_layout::compressed_tensors}) {
    const stored_set s(encode_quantized_linear(q, layout));
    const std::string m = q.module;
    EXPECT_EQ(s.at(m + ".weight").type, dtype::f8_e4m3);
    EXPECT_EQ(s.at(m + ".weight").shape, (std::vector<int64_t>{8, 48}));
    EXPECT_EQ(s.at(m + ".weight_scale").type, dtype::f32);
    EXPECT_EQ(s.at(m + ".weight_scale").shape,
              layout == export_layout::modelopt ? std::vector<int64_t>{} : std::vector<int64_t>{1});
    EXPECT_EQ(s.scalar(m + ".input_scale"), 0.5f);
    const auto d = decode_quantized_linear(m, 8, 48, s.lookup());
    ASSERT_TRUE(d.has_value());
    EXPECT_EQ(d->format, format_id::fp8_per_tensor);
    for (size_t i = 0; i < d->w.size(); ++i)
      ASSERT_EQ(d->w[i], e4m3_decode(uint8_t(s.at(m + ".weight").bytes[i])) * q.fp8.scales[0]) << i;
  }
}

TEST(quantized_linear, unquantized_weight_is_not_decoded) {
  const stored_set s({{"x.weight", dtype::bf16, {2, 16}, std::vector<std::byte>(64)}});
  EXPECT_FALSE(decode_quantized_linear("x", 2, 16, s.lookup()).has_value());
}

TEST(quantized_linear, damaged_siblings_are_named) {
  const auto t = testing::make_tensor(testing::tensor_kind::normal, 16, 32, 9);
  const quantized_linear q = make_nvfp4(format_id::nvfp4, t);
  const auto expect_error = [&](std::vector<encoded_tensor> v, const std::string& what) {
    const stored_set s(std::move(v));
    try {
      decode_quantized_linear(q.module, 16, 32, s.lookup());
      ADD_FAILURE() << "no error for " << what;
    } catch (const std::runtime_error& e) {
      EXPECT_THAT(e.what(), HasSubstr(what));
    }
  };
  auto v = encode_quantized_linear(q, export_layout::modelopt);
  auto without = [&](const std::string& suffix) {
    auto c = v;
    std::erase_if(c, [&](const encoded_tensor& e) { return e.name == q.module + suffix; });
    return c;
  };
  expect_error(without(".weight_scale"), "'model.layers.0.mlp.up_proj.weight_scale' is missing");
  expect_error(without(".weight_scale_2"), "weight_scale_2' is missing");
  auto bad_shape = v;
  bad_shape[1].shape = {16, 3};
  expect_error(bad_shape, "has shape [16, 3], expected [16, 2]");
  auto zero_scale = v;
  for (auto& e : zero_scale)
    if (e.name == q.module + ".weight_scale_2") std::memset(e.bytes.data(), 0, 4);
  expect_error(zero_scale, "not a positive finite scale");
}

TEST(quantized_linear, quantization_tensor_names) {
  EXPECT_TRUE(is_quantization_tensor("a.q_proj.weight_scale"));
  EXPECT_TRUE(is_quantization_tensor("a.k_proj.k_scale"));
  EXPECT_TRUE(is_quantization_tensor("a.up.weight_packed"));
  EXPECT_FALSE(is_quantization_tensor("a.q_proj.weight"));
  EXPECT_FALSE(is_quantization_tensor("a.norm.bias"));
}

// ---- the configs ----

const layer_formats kMixed = {{"backbone.layers.0.mixer.in_proj", format_id::fp8_per_tensor},
                              {"backbone.layers.1.mixer.gate", format_id::bf16},
                              {"backbone.layers.1.mixer.experts.0.up_proj", format_id::nvfp4},
                              {"lm_head", format_id::bf16}};

TEST(quant_config, modelopt_single_format) {
  const layer_formats fp8 = {{"a.q_proj", format_id::fp8_per_tensor}, {"lm_head", format_id::bf16}};
  const quant_configs c = make_quant_configs(fp8, kv_cache_format::fp8, export_layout::modelopt, "1.0");
  const auto& q = c.hf_quant_config["quantization"];
  EXPECT_EQ(q["quant_algo"], "FP8");
  EXPECT_EQ(q["kv_cache_quant_algo"], "FP8");
  EXPECT_EQ(q["exclude_modules"], nlohmann::json::array({"lm_head"}));
  EXPECT_FALSE(q.contains("quantized_layers"));
  const auto& qc = c.quantization_config;
  EXPECT_EQ(qc["quant_method"], "modelopt");
  EXPECT_EQ(qc["quant_algo"], "FP8");
  EXPECT_EQ(qc["ignore"], nlohmann::json::array({"lm_head"}));
  EXPECT_EQ(qc["kv_cache_scheme"]["num_bits"], 8);
  EXPECT_EQ(qc["config_groups"]["group_0"]["targets"], nlohmann::json::array({"Linear"}));

  const layer_formats nv = {{"a.q_proj", format_id::nvfp4}};
  const quant_configs n = make_quant_configs(nv, kv_cache_format::none, export_layout::modelopt, "1.0");
  EXPECT_EQ(n.hf_quant_config["quantization"]["quant_algo"], "NVFP4");
  EXPECT_EQ(n.hf_quant_config["quantization"]["group_size"], 16);
  // vLLM's NVFP4 config reader requires these keys present, null allowed
  EXPECT_TRUE(n.hf_quant_config["quantization"].contains("kv_cache_quant_algo"));
  EXPECT_TRUE(n.hf_quant_config["quantization"]["kv_cache_quant_algo"].is_null());
  EXPECT_TRUE(n.hf_quant_config["quantization"]["exclude_modules"].is_array());
}

TEST(quant_config, modelopt_mixed_precision_lists_every_quantized_layer) {
  const quant_configs c = make_quant_configs(kMixed, kv_cache_format::none, export_layout::modelopt, "1.0");
  const auto& q = c.hf_quant_config["quantization"];
  EXPECT_EQ(q["quant_algo"], "MIXED_PRECISION");
  EXPECT_EQ(q["quantized_layers"].size(), 2u);
  EXPECT_EQ(q["quantized_layers"]["backbone.layers.0.mixer.in_proj"]["quant_algo"], "FP8");
  EXPECT_EQ(q["quantized_layers"]["backbone.layers.1.mixer.experts.0.up_proj"]["quant_algo"], "NVFP4");
  EXPECT_EQ(q["quantized_layers"]["backbone.layers.1.mixer.experts.0.up_proj"]["group_size"], 16);
  EXPECT_EQ(q["exclude_modules"], nlohmann::json::array({"backbone.layers.1.mixer.gate", "lm_head"}));
  EXPECT_EQ(c.quantization_config["quantized_layers"], q["quantized_layers"]);
  EXPECT_EQ(c.quantization_config["config_groups"].size(), 2u);
}

TEST(quant_config, compressed_tensors_groups_by_scheme) {
  const quant_configs c = make_quant_configs(kMixed, kv_cache_format::fp8, export_layout::compressed_tensors, "1.0");
  EXPECT_TRUE(c.hf_quant_config.is_null());
  const auto& qc = c.quantization_config;
  EXPECT_EQ(qc["quant_method"], "compressed-tensors");
  EXPECT_EQ(qc["format"], "mixed-precision");
  EXPECT_EQ(qc["quantization_status"], "compressed");
  bool saw_fp4 = false, saw_fp8 = false;
  for (const auto& [name, g] : qc["config_groups"].items()) {
    if (g["format"] == "nvfp4-pack-quantized") {
      saw_fp4 = true;
      EXPECT_EQ(g["weights"]["strategy"], "tensor_group");
      EXPECT_EQ(g["weights"]["group_size"], 16);
      EXPECT_EQ(g["input_activations"]["dynamic"], "local");
      EXPECT_EQ(g["targets"], nlohmann::json::array({"backbone.layers.1.mixer.experts.0.up_proj"}));
    } else {
      saw_fp8 = true;
      EXPECT_EQ(g["format"], "float-quantized");
      EXPECT_EQ(g["weights"]["strategy"], "tensor");
      EXPECT_EQ(g["input_activations"]["dynamic"], false);
    }
  }
  EXPECT_TRUE(saw_fp4 && saw_fp8);
  EXPECT_EQ(qc["kv_cache_scheme"]["type"], "float");
  EXPECT_EQ(qc["ignore"], nlohmann::json::array({"backbone.layers.1.mixer.gate", "lm_head"}));
}

}  // namespace
}  // namespace mixq
