// Llama 3 RoPE scaling (rope_type "llama3"): the inverse-frequency table against the formula of
// transformers' _compute_llama3_parameters in each band, the forward pass against transformers
// (tests/golden/make_llama3_rope_goldens.py), and the config errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <numbers>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pipeline/io/safetensors_file.hpp"  // io_error
#include "pipeline/model/llama.hpp"
#include "model_test_support.hpp"

namespace mixq {
namespace {

using json = nlohmann::json;

// The golden's model: head_dim 16, theta 100, factor 8, low 1, high 4, original 64.
llama_config golden_rope_config() {
  llama_config c;
  c.head_dim = 16;
  c.rope_theta = 100.0;
  c.rope_llama3 = llama3_rope_scaling{8.0, 1.0, 4.0, 64.0};
  return c;
}

TEST(llama_rope, llama3_inverse_frequencies_follow_each_band) {
  const llama_config c = golden_rope_config();
  const std::vector<double> got = rope_inverse_frequencies(c);
  ASSERT_EQ(got.size(), 8u);
  int kept = 0, interpolated = 0, divided = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double base = 1.0 / std::pow(100.0, double(2 * i) / 16.0);
    const double wavelen = 2.0 * std::numbers::pi / base;
    double want = 0.0;
    if (wavelen < 64.0 / 4.0) {
      want = base;
      ++kept;
    } else if (wavelen > 64.0 / 1.0) {
      want = base / 8.0;
      ++divided;
    } else {
      const double smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1.0 - smooth) * base / 8.0 + smooth * base;
      EXPECT_GT(smooth, 0.0) << i;
      EXPECT_LT(smooth, 1.0) << i;
      ++interpolated;
    }
    EXPECT_NEAR(got[i], want, 1e-14 * want) << "index " << i << ", wavelength " << wavelen;
  }
  // LlamaRotaryEmbedding(config).inv_freq in transformers 5.23 (float32) for the same config
  const std::vector<double> transformers = {1.0,          0.5623413324356079,   0.24438458681106567,
                                            0.06430987268686295, 0.013042256236076355, 0.007029266096651554,
                                            0.0039528473280370235, 0.002222849288955331};
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], transformers[i], 2e-7 * transformers[i]) << i;
  EXPECT_EQ(kept, 2);
  EXPECT_EQ(interpolated, 3);
  EXPECT_EQ(divided, 3);

  llama_config plain = c;
  plain.rope_llama3.reset();
  const std::vector<double> unscaled = rope_inverse_frequencies(plain);
  for (size_t i = 0; i < unscaled.size(); ++i)
    EXPECT_NEAR(unscaled[i], std::pow(100.0, -double(2 * i) / 16.0), 1e-15) << i;
}

// The scratch synth llama with `patch` merged into its config; its llama_config, or the load error.
struct loaded {
  llama_config config;
  std::string error;
};
loaded load_patched(const json& patch) {
  const testing::synth_dir d(synth_arch::llama);
  d.patch_config(patch);
  try {
    return {llama_model::load(d.dir).config(), ""};
  } catch (const io_error& e) {
    return {{}, e.what()};
  }
}

json llama3_section() {
  return {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
          {"original_max_position_embeddings", 64}};
}

TEST(llama_rope, synth_llama3_logits_match_transformers) {
  const json golden = testing::read_golden("llama3_rope_logits.json");
  const testing::synth_dir d(synth_arch::llama);
  d.patch_config(golden["config_patch"]);
  const llama_model model = llama_model::load(d.dir);
  ASSERT_TRUE(model.config().rope_llama3.has_value());
  const auto tokens = golden["tokens"].get<std::vector<int32_t>>();
  const auto positions = golden["positions"].get<std::vector<size_t>>();
  const std::vector<float> logits = model.forward(tokens);
  const size_t V = size_t(model.config().vocab);
  ASSERT_EQ(logits.size(), tokens.size() * V);
  std::vector<float> rows;
  for (const size_t p : positions)
    rows.insert(rows.end(), logits.begin() + std::ptrdiff_t(p * V), logits.begin() + std::ptrdiff_t((p + 1) * V));
  // 2e-5, not the 1e-5 of the 8-token golden: transformers forms pos * inv_freq in float32, an angle
  // error of up to ~4e-6 rad by position 99, where mixq's tables are computed in double.
  EXPECT_LT(testing::worst_logit_difference(rows, golden["logits"]), 2e-5)
      << "largest relative difference from transformers";
}

TEST(llama_rope, llama3_is_read_from_every_spelling) {
  const auto expect_golden_rope = [](const loaded& l, double original) {
    ASSERT_EQ(l.error, "");
    EXPECT_EQ(l.config.rope_theta, 100.0);
    ASSERT_TRUE(l.config.rope_llama3.has_value());
    EXPECT_EQ(l.config.rope_llama3->factor, 8.0);
    EXPECT_EQ(l.config.rope_llama3->low_freq_factor, 1.0);
    EXPECT_EQ(l.config.rope_llama3->high_freq_factor, 4.0);
    EXPECT_EQ(l.config.rope_llama3->original_max_positions, original);
  };
  expect_golden_rope(load_patched({{"rope_theta", 100.0}, {"rope_scaling", llama3_section()}}), 64.0);
  json old_style = llama3_section();  // pre-4.45 configs: "type"
  old_style.erase("rope_type");
  old_style["type"] = "llama3";
  expect_golden_rope(load_patched({{"rope_theta", 100.0}, {"rope_scaling", old_style}}), 64.0);
  json v5 = llama3_section();  // transformers v5: rope_theta inside rope_parameters
  v5["rope_theta"] = 100.0;
  expect_golden_rope(load_patched({{"rope_parameters", v5}}), 64.0);
  // transformers' standardize_rope_params: a top-level original_max_position_embeddings wins, and
  // without one anywhere max_position_embeddings stands in
  expect_golden_rope(load_patched({{"rope_parameters", v5}, {"original_max_position_embeddings", 32}}), 32.0);
  v5.erase("original_max_position_embeddings");
  expect_golden_rope(load_patched({{"rope_parameters", v5}, {"max_position_embeddings", 512}}), 512.0);

  const loaded plain = load_patched({{"rope_scaling", {{"rope_type", "default"}}}});
  EXPECT_EQ(plain.error, "");
  EXPECT_FALSE(plain.config.rope_llama3.has_value());
}

TEST(llama_rope, bad_rope_configs_are_refused_naming_the_key) {
  const auto error_with = [](const json& rope_scaling) {
    return load_patched({{"rope_scaling", rope_scaling}}).error;
  };
  const auto expect_has = [](const std::string& error, const std::string& part) {
    EXPECT_NE(error.find(part), std::string::npos) << "'" << part << "' not in: " << error;
  };
  for (const char* type : {"linear", "dynamic", "yarn", "longrope"}) {
    const std::string e = error_with({{"rope_type", type}, {"factor", 2.0}});
    expect_has(e, fmt::format("rope type '{}'", type));
    expect_has(e, "'default' and 'llama3'");
  }
  expect_has(load_patched({{"rope_parameters", {{"type", "yarn"}, {"factor", 4.0}}}}).error,
             "'rope_parameters' has rope type 'yarn'");

  for (const char* key : {"factor", "low_freq_factor", "high_freq_factor"}) {
    json missing = llama3_section();
    missing.erase(key);
    expect_has(error_with(missing), fmt::format("'rope_scaling.{}' is missing", key));
  }
  for (const char* key : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
    for (const json& bad : {json(0.0), json(-1.0), json("8")}) {
      json s = llama3_section();
      s[key] = bad;
      expect_has(error_with(s), fmt::format("'rope_scaling.{}' must be a positive number", key));
    }
  }
  expect_has(load_patched({{"rope_scaling", llama3_section()}, {"original_max_position_embeddings", 0}}).error,
             "'original_max_position_embeddings' must be a positive number");
  json equal = llama3_section();
  equal["low_freq_factor"] = 4.0;
  expect_has(error_with(equal), "'rope_scaling.low_freq_factor' (4) must be below 'rope_scaling.high_freq_factor' (4)");
  json inverted = llama3_section();
  inverted["low_freq_factor"] = 5.0;
  expect_has(error_with(inverted), "must be below 'rope_scaling.high_freq_factor'");
}

}  // namespace
}  // namespace mixq
