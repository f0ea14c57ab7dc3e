// Recipes: every key of the YAML schema, every error with its file and line, glob matching (also
// on inputs that would make a backtracking matcher exponential), the quantization plan (first
// match, default, routers, shape fallbacks, fused groups), and the shipped recipes on real configs.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/model/model_spec.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// The repository root: MIXQ_SOURCE_DIR under ctest, else found from this file's path.
fs::path source_dir() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  return src ? fs::path(src) : fs::path(__FILE__).parent_path().parent_path().parent_path();
}

recipe parse(const std::string& yaml) { return parse_recipe(yaml, "x.yaml"); }

// The io_error message parsing `yaml` gives; fails the test when it parses.
std::string parse_error(const std::string& yaml) {
  try {
    parse(yaml);
  } catch (const io_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "parsed without error:\n" << yaml;
  return {};
}

// ---- parsing ---------------------------------------------------------------------------------

TEST(RecipeParse, ReadsEveryKey) {
  const recipe r = parse(R"(name: everything
description: all keys set
calibration:
  data: calib/text.jsonl
  samples: 32
  seq_len: 512
  batch: 4
quantize:
  default: {format: fp8, weights: mse}
  rules:
    - match: "*.experts.*"
      format: nvfp4
      weights: mse
    - match: ["*q_proj", "*k_proj"]
      format: bf16
    - match: "*down_proj"
      format: nvfp4_w4a16
kv_cache: fp8
export:
  layout: compressed-tensors
  max_shard_size: 500MiB
)");
  EXPECT_EQ(r.name, "everything");
  EXPECT_EQ(r.origin, "x.yaml");
  EXPECT_EQ(r.description, "all keys set");
  EXPECT_EQ(r.calibration.data, "calib/text.jsonl");
  EXPECT_EQ(r.calibration.samples, 32);
  EXPECT_EQ(r.calibration.seq_len, 512);
  EXPECT_EQ(r.calibration.batch, 4);
  EXPECT_EQ(r.default_weight.format, format_id::fp8_per_tensor);
  EXPECT_EQ(r.default_weight.fp8, fp8_selector::mse);
  ASSERT_EQ(r.rules.size(), 4u);
  EXPECT_EQ(r.rules[0].pattern, "*.experts.*");
  EXPECT_EQ(r.rules[0].weight.format, format_id::nvfp4);
  EXPECT_EQ(r.rules[0].weight.nvfp4, nvfp4_selector::mse_fp8_sweep);
  EXPECT_EQ(r.rules[0].line, 11);
  // A list of globs: one rule per glob, all on the rule's line.
  EXPECT_EQ(r.rules[1].pattern, "*q_proj");
  EXPECT_EQ(r.rules[2].pattern, "*k_proj");
  EXPECT_EQ(r.rules[1].weight.format, format_id::bf16);
  EXPECT_EQ(r.rules[1].line, 14);
  EXPECT_EQ(r.rules[2].line, 14);
  EXPECT_EQ(r.rules[3].weight.format, format_id::nvfp4_w4a16);
  EXPECT_EQ(r.rules[3].weight.nvfp4, nvfp4_selector::max);
  EXPECT_EQ(r.rules[3].line, 16);
  EXPECT_EQ(r.kv_cache, kv_cache_format::fp8);
  EXPECT_EQ(r.output.layout, export_layout::compressed_tensors);
  EXPECT_EQ(r.output.max_shard_bytes, 500u << 20);
}

TEST(RecipeParse, DefaultsAndNameFromTheFileStem) {
  const recipe r = parse_recipe("quantize:\n  rules: []\n", "some/dir/my_recipe.yaml");
  EXPECT_EQ(r.name, "my_recipe");
  EXPECT_EQ(r.description, "");
  EXPECT_EQ(r.calibration.data, "");
  EXPECT_EQ(r.calibration.samples, 64);
  EXPECT_EQ(r.calibration.seq_len, 256);
  EXPECT_EQ(r.calibration.batch, 1);
  EXPECT_EQ(r.default_weight.format, format_id::bf16);
  EXPECT_THAT(r.rules, IsEmpty());
  EXPECT_EQ(r.kv_cache, kv_cache_format::none);
  EXPECT_EQ(r.output.layout, export_layout::modelopt);
  EXPECT_EQ(r.output.max_shard_bytes, 5'000'000'000u);
  EXPECT_EQ(to_string(r.kv_cache), "none");
  EXPECT_EQ(to_string(export_layout::compressed_tensors), "compressed-tensors");

  EXPECT_EQ(parse("quantize:\n  default: nvfp4\n").default_weight.format, format_id::nvfp4);
}

TEST(RecipeParse, SelectorNames) {
  const auto nvfp4_with = [](const std::string& sel, const std::string& format = "nvfp4") {
    return parse("quantize:\n  default: {format: " + format + ", weights: " + sel + "}\n").default_weight.nvfp4;
  };
  EXPECT_EQ(nvfp4_with("max"), nvfp4_selector::max);
  EXPECT_EQ(nvfp4_with("mse"), nvfp4_selector::mse_fp8_sweep);
  EXPECT_EQ(nvfp4_with("mse_multiplier"), nvfp4_selector::mse_multiplier);
  EXPECT_EQ(nvfp4_with("four_over_six"), nvfp4_selector::four_over_six);
  EXPECT_EQ(nvfp4_with("mse+four_over_six"), nvfp4_selector::mse_four_over_six);
  EXPECT_EQ(nvfp4_with("four_over_six", "nvfp4_w4a16"), nvfp4_selector::four_over_six);
  EXPECT_EQ(parse("quantize:\n  default: {format: fp8, weights: max}\n").default_weight.fp8, fp8_selector::max);
  EXPECT_EQ(parse("quantize:\n  default: {format: fp8, weights: mse}\n").default_weight.fp8, fp8_selector::mse);
}

TEST(RecipeParse, ShardSizes) {
  const auto bytes = [](const std::string& size) {
    return parse("quantize: {}\nexport:\n  max_shard_size: " + size + "\n").output.max_shard_bytes;
  };
  EXPECT_EQ(bytes("1000"), 1000u);
  EXPECT_EQ(bytes("7B"), 7u);
  EXPECT_EQ(bytes("2KB"), 2'000u);
  EXPECT_EQ(bytes("500MB"), 500'000'000u);
  EXPECT_EQ(bytes("5GB"), 5'000'000'000u);
  EXPECT_EQ(bytes("3TB"), 3'000'000'000'000u);
  EXPECT_EQ(bytes("2KiB"), 2048u);
  EXPECT_EQ(bytes("3MiB"), 3u << 20);
  EXPECT_EQ(bytes("1 GiB"), 1u << 30);
  EXPECT_EQ(bytes("2TiB"), uint64_t(2) << 40);
  for (const std::string bad : {"5gb", "GB", "-5GB", "0", "0GB", "5XB", "1.5GB", "5 5GB", "99999999999999999999",
                                "20000000TiB"}) {
    const std::string msg = parse_error("quantize: {}\nexport:\n  max_shard_size: " + bad + "\n");
    EXPECT_THAT(msg, HasSubstr("x.yaml:3: export.max_shard_size")) << bad;
    EXPECT_THAT(msg, HasSubstr(bad)) << bad;
  }
}

// ---- errors: each names the file, the 1-based line and the key or value ----------------------

TEST(RecipeErrors, UnknownKeysEverywhere) {
  EXPECT_THAT(parse_error("name: a\nquantize: {}\nkv_cahce: fp8\n"),
              HasSubstr("x.yaml:3: unknown key 'kv_cahce' in the recipe (expected one of: name, description, "
                        "calibration, quantize, search, kv_cache, export)"));
  EXPECT_THAT(parse_error("quantize: {}\ncalibration:\n  samples: 8\n  sample: 8\n"),
              HasSubstr("x.yaml:4: unknown key 'sample' in calibration (expected one of: data, samples, seq_len, batch)"));
  EXPECT_THAT(parse_error("quantize:\n  default: bf16\n  rule: []\n"),
              HasSubstr("x.yaml:3: unknown key 'rule' in quantize (expected one of: default, rules)"));
  EXPECT_THAT(parse_error("quantize:\n  default:\n    format: fp8\n    weight: max\n"),
              HasSubstr("x.yaml:4: unknown key 'weight' in quantize.default (expected one of: format, weights)"));
  EXPECT_THAT(parse_error(R"(quantize:
  rules:
    - match: "*a"
      format: fp8
    - match: "*b"
      format: fp8
    - match: "*c"
      formt: fp8
)"),
              HasSubstr("x.yaml:8: unknown key 'formt' in quantize.rules[2] (expected one of: match, format, weights)"));
  EXPECT_THAT(parse_error("quantize: {}\nexport:\n  layout: modelopt\n  shard_size: 5GB\n"),
              HasSubstr("x.yaml:4: unknown key 'shard_size' in export (expected one of: layout, max_shard_size)"));
  EXPECT_THAT(parse_error("quantize: {}\nname: a\nname: b\n"), HasSubstr("x.yaml:3: duplicate key 'name' in the recipe"));
}

TEST(RecipeErrors, BadValues) {
  EXPECT_THAT(parse_error("quantize: {}\ncalibration:\n  samples: -3\n"),
              HasSubstr("x.yaml:3: calibration.samples must be a positive integer, not '-3'"));
  EXPECT_THAT(parse_error("quantize: {}\ncalibration:\n  seq_len: 0\n"),
              HasSubstr("x.yaml:3: calibration.seq_len must be a positive integer, not '0'"));
  EXPECT_THAT(parse_error("quantize: {}\ncalibration:\n\n  batch: two\n"),
              HasSubstr("x.yaml:4: calibration.batch must be a positive integer, not 'two'"));
  EXPECT_THAT(parse_error("quantize: {}\ncalibration:\n  samples: [1, 2]\n"),
              HasSubstr("x.yaml:3: calibration.samples must be a positive integer, not a list"));
  EXPECT_THAT(parse_error("quantize: {}\ncalibration:\n  data: {path: a}\n"),
              HasSubstr("x.yaml:3: calibration.data must be a string, not a mapping"));
  EXPECT_THAT(parse_error("quantize: {}\ncalibration: 64\n"),
              HasSubstr("x.yaml:2: calibration must be a mapping, not a scalar"));
  EXPECT_THAT(parse_error("quantize: {}\nkv_cache: int8\n"),
              HasSubstr("x.yaml:2: unknown kv_cache 'int8' (expected one of: none, fp8)"));
  EXPECT_THAT(parse_error("quantize: {}\nexport:\n  layout: gguf\n"),
              HasSubstr("x.yaml:3: unknown export.layout 'gguf' (expected one of: modelopt, compressed-tensors)"));
  EXPECT_THAT(parse_error("name: ''\nquantize: {}\n"), HasSubstr("x.yaml:1: name must not be empty"));
  EXPECT_THAT(parse_error("description: [a]\nquantize: {}\n"),
              HasSubstr("x.yaml:1: description must be a string, not a list"));
}

TEST(RecipeErrors, Formats) {
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match: a\n      format: fp5\n"),
              HasSubstr("x.yaml:4: unknown format 'fp5' in quantize.rules[0] (expected one of: bf16, fp8, nvfp4, "
                        "nvfp4_w4a16)"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match: a\n      format: mxfp4\n"),
              HasSubstr("x.yaml:4: format 'mxfp4' can be fake-quantized but not exported; use nvfp4"));
  EXPECT_THAT(parse_error("quantize:\n  default: nf4\n"),
              HasSubstr("x.yaml:2: format 'nf4' can be fake-quantized but not exported; use nvfp4_w4a16"));
  EXPECT_THAT(parse_error("quantize:\n  default: fp8_per_channel\n"),
              HasSubstr("x.yaml:2: format 'fp8_per_channel' can be fake-quantized but not exported; use fp8"));
  EXPECT_THAT(parse_error("quantize:\n  default: mxfp8\n"), HasSubstr("use fp8"));
  EXPECT_THAT(parse_error("quantize:\n  default: [fp8]\n"),
              HasSubstr("x.yaml:2: quantize.default must be a format or a mapping with 'format', not a list"));
  EXPECT_THAT(parse_error("quantize:\n  default:\n    weights: max\n"),
              HasSubstr("x.yaml:3: missing key 'format' in quantize.default"));
}

TEST(RecipeErrors, SelectorsMustFitTheFormat) {
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match: a\n      format: fp8\n      weights: four_over_six\n"),
              HasSubstr("x.yaml:5: weight selector 'four_over_six' does not apply to fp8 in quantize.rules[0] "
                        "(expected one of: max, mse)"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match: a\n      format: nvfp4\n      weights: mse_sweep\n"),
              HasSubstr("x.yaml:5: weight selector 'mse_sweep' does not apply to nvfp4 in quantize.rules[0] "
                        "(expected one of: max, mse, mse_multiplier, four_over_six, mse+four_over_six)"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match: a\n      format: bf16\n      weights: max\n"),
              HasSubstr("x.yaml:5: quantize.rules[0].weights: format 'bf16' has no weight scales to select"));
}

TEST(RecipeErrors, RuleShape) {
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - format: fp8\n"),
              HasSubstr("x.yaml:3: missing key 'match' in quantize.rules[0]"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match: a\n      format: fp8\n    - match: b\n"),
              HasSubstr("x.yaml:5: missing key 'format' in quantize.rules[1]"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    match: a\n"),
              HasSubstr("x.yaml:3: quantize.rules must be a list, not a mapping"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - fp8\n"),
              HasSubstr("x.yaml:3: quantize.rules[0] must be a mapping, not a scalar"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match: []\n      format: fp8\n"),
              HasSubstr("x.yaml:3: quantize.rules[0].match must be a glob or a non-empty list of globs, not a list"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match: ['a', '']\n      format: fp8\n"),
              HasSubstr("x.yaml:3: empty glob in quantize.rules[0].match"));
  EXPECT_THAT(parse_error("quantize:\n  rules:\n    - match:\n        - a\n        - {b: c}\n      format: fp8\n"),
              HasSubstr("x.yaml:5: quantize.rules[0].match must be a string, not a mapping"));
}

TEST(RecipeErrors, DocumentShape) {
  EXPECT_THAT(parse_error("name: a\n"), HasSubstr("x.yaml:1: missing key 'quantize'"));
  EXPECT_THAT(parse_error(""), HasSubstr("x.yaml:1: the recipe must be a mapping, not empty"));
  EXPECT_THAT(parse_error("- a\n- b\n"), HasSubstr("x.yaml:1: the recipe must be a mapping, not a list"));
  EXPECT_THAT(parse_error("quantize: fp8\n"), HasSubstr("x.yaml:1: quantize must be a mapping, not a scalar"));
  EXPECT_THAT(parse_error("quantize: {}\n? [a, b]\n: c\n"), HasSubstr("x.yaml:2: keys in the recipe must be names"));
}

TEST(RecipeErrors, MalformedYaml) {
  EXPECT_THAT(parse_error("name: a\nquantize: {}\ndescription: a: b\n"),
              HasSubstr("x.yaml:3: malformed YAML: illegal map value"));
  EXPECT_THAT(parse_error("name: a\n  bad indent: b\nquantize: {}\n"), HasSubstr("x.yaml:2: malformed YAML"));
  EXPECT_THAT(parse_error("quantize: {}\nname: [a, b\nkv_cache: fp8\n"),
              HasSubstr("x.yaml:3: malformed YAML: end of sequence flow not found"));
  EXPECT_THAT(parse_error("quantize: {}\n\tname: a\n"), HasSubstr("x.yaml:2: malformed YAML"));
  // A glob that starts with '*' must be quoted: unquoted it is a YAML alias.
  const std::string alias = parse_error("quantize:\n  rules:\n    - match: *mixer.experts.*\n      format: fp8\n");
  EXPECT_THAT(alias, HasSubstr("x.yaml:3: malformed YAML"));
  EXPECT_THAT(alias, HasSubstr("quote globs that start with '*'"));
}

// ---- glob matching ---------------------------------------------------------------------------

TEST(GlobMatch, Cases) {
  EXPECT_TRUE(glob_match("lm_head", "lm_head"));
  EXPECT_FALSE(glob_match("lm_head", "lm_head2"));
  EXPECT_FALSE(glob_match("lm_head", "xlm_head"));
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("*", "a.b.c"));
  EXPECT_TRUE(glob_match("", ""));
  EXPECT_FALSE(glob_match("", "a"));
  EXPECT_TRUE(glob_match("*mixer.experts.*", "backbone.layers.1.mixer.experts.15.down_proj"));
  EXPECT_FALSE(glob_match("*mixer.experts.*", "backbone.layers.1.mixer.shared_experts.up_proj"));
  EXPECT_TRUE(glob_match("*mixer.shared_experts.*", "backbone.layers.1.mixer.shared_experts.up_proj"));
  EXPECT_TRUE(glob_match("*q_proj*", "model.layers.0.self_attn.q_proj"));  // '*' may be empty
  EXPECT_TRUE(glob_match("*self_attn.?_proj", "model.layers.0.self_attn.o_proj"));
  EXPECT_FALSE(glob_match("*self_attn.?_proj", "model.layers.0.self_attn.qk_proj"));
  EXPECT_FALSE(glob_match("?", ""));
  EXPECT_TRUE(glob_match("a?c", "abc"));
  EXPECT_TRUE(glob_match("mtp.*", "mtp.layers.0.eh_proj"));
  EXPECT_FALSE(glob_match("mtp.*", "backbone.mtp.x"));
  EXPECT_TRUE(glob_match("**a**", "xxaxx"));
  EXPECT_TRUE(glob_match("*a*b", "aaab"));
  EXPECT_FALSE(glob_match("*a*b", "aaaba"));
  EXPECT_TRUE(glob_match("a*b*c", "abbbc"));
  EXPECT_FALSE(glob_match("a*b*c", "acb"));
  EXPECT_TRUE(glob_match("[q]", "[q]"));  // no character classes: brackets are literal
}

TEST(GlobMatch, PathologicalPatternsStayLinear) {
  const std::string name(200'000, 'a');
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(glob_match("*a*a*a*a*b", name));
  EXPECT_TRUE(glob_match("*a*a*a*a*a", name));
  EXPECT_FALSE(glob_match("*?*?*?*?*?*b", name));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 1.0);
}

// ---- the quantization plan -------------------------------------------------------------------

linear_spec linear(std::string module, int64_t out, int64_t in, linear_role role, std::string group = "") {
  linear_spec l;
  l.quant_group = group.empty() ? module : group;
  l.module = std::move(module);
  l.out_features = out;
  l.in_features = in;
  l.role = role;
  return l;
}

const linear_decision& decision(const quant_plan& plan, const model_spec& spec, const std::string& module) {
  for (size_t i = 0; i < spec.linears.size(); ++i)
    if (spec.linears[i].module == module) return plan.linears.at(i);
  throw std::runtime_error("no linear " + module);
}

model_spec toy_spec() {
  model_spec s;
  s.origin = "toy";
  s.linears = {linear("l0.attn.q_proj", 64, 64, linear_role::qkv, "l0.attn"),
               linear("l0.attn.k_proj", 32, 64, linear_role::qkv, "l0.attn"),
               linear("l0.attn.v_proj", 32, 64, linear_role::qkv, "l0.attn"),
               linear("l0.attn.o_proj", 64, 64, linear_role::o),
               linear("l0.moe.gate", 8, 64, linear_role::router),
               linear("l0.moe.experts.0.up_proj", 32, 64, linear_role::expert, "l0.moe.experts"),
               linear("l0.moe.experts.0.down_proj", 64, 40, linear_role::expert, "l0.moe.experts"),
               linear("l0.moe.experts.1.up_proj", 32, 64, linear_role::expert, "l0.moe.experts"),
               linear("l0.moe.experts.1.down_proj", 64, 40, linear_role::expert, "l0.moe.experts"),
               linear("lm_head", 512, 64, linear_role::lm_head)};
  return s;
}

TEST(RecipePlan, FirstMatchWinsThenTheDefault) {
  const recipe r = parse(R"(quantize:
  default: {format: fp8, weights: mse}
  rules:
    - match: "*.o_proj"
      format: bf16
    - match: "*_proj"
      format: nvfp4
      weights: four_over_six
    - match: "*.o_proj"
      format: fp8
)");
  const model_spec spec = toy_spec();
  const quant_plan plan = plan_quantization(r, spec);
  ASSERT_EQ(plan.linears.size(), spec.linears.size());
  const linear_decision& o = decision(plan, spec, "l0.attn.o_proj");
  EXPECT_EQ(o.weight.format, format_id::bf16);
  EXPECT_EQ(o.rule, 0);
  EXPECT_EQ(o.note, "");
  const linear_decision& q = decision(plan, spec, "l0.attn.q_proj");
  EXPECT_EQ(q.weight.format, format_id::nvfp4);
  EXPECT_EQ(q.weight.nvfp4, nvfp4_selector::four_over_six);
  EXPECT_EQ(q.rule, 1);
  const linear_decision& head = decision(plan, spec, "lm_head");
  EXPECT_EQ(head.weight.format, format_id::fp8_per_tensor);
  EXPECT_EQ(head.weight.fp8, fp8_selector::mse);
  EXPECT_EQ(head.rule, -1);
  // The third rule matches o_proj, just never first: no warning.
  EXPECT_THAT(plan.warnings, IsEmpty());
}

TEST(RecipePlan, RoutersStayBf16) {
  const model_spec spec = toy_spec();
  {  // by the default: no note
    const quant_plan plan = plan_quantization(parse("quantize:\n  default: fp8\n"), spec);
    const linear_decision& router = decision(plan, spec, "l0.moe.gate");
    EXPECT_EQ(router.weight.format, format_id::bf16);
    EXPECT_EQ(router.rule, -1);
    EXPECT_EQ(router.note, "");
  }
  {  // against an explicit rule: a note
    const quant_plan plan =
        plan_quantization(parse("quantize:\n  rules:\n    - match: '*'\n      format: nvfp4\n"), spec);
    const linear_decision& router = decision(plan, spec, "l0.moe.gate");
    EXPECT_EQ(router.weight.format, format_id::bf16);
    EXPECT_EQ(router.rule, 0);
    EXPECT_EQ(router.note, "router stays BF16");
    EXPECT_EQ(decision(plan, spec, "lm_head").weight.format, format_id::nvfp4);
  }
}

TEST(RecipePlan, ShapeFallbackSpreadsThroughTheQuantGroup) {
  // The experts' down_proj has K = 40, not a multiple of 16: every expert of the layer stays BF16.
  const model_spec spec = toy_spec();
  const quant_plan plan = plan_quantization(parse("quantize:\n  default: nvfp4\n"), spec);
  const linear_decision& down0 = decision(plan, spec, "l0.moe.experts.0.down_proj");
  EXPECT_EQ(down0.weight.format, format_id::bf16);
  EXPECT_THAT(down0.note, HasSubstr("(the last dim, 40)"));
  EXPECT_THAT(decision(plan, spec, "l0.moe.experts.1.down_proj").note, HasSubstr("(the last dim, 40)"));
  for (const std::string up : {"l0.moe.experts.0.up_proj", "l0.moe.experts.1.up_proj"}) {
    const linear_decision& d = decision(plan, spec, up);
    EXPECT_EQ(d.weight.format, format_id::bf16) << up;
    EXPECT_THAT(d.note, HasSubstr("fused with l0.moe.experts.0.down_proj, which stays BF16: nvfp4 needs K")) << up;
  }
  EXPECT_EQ(decision(plan, spec, "l0.attn.q_proj").weight.format, format_id::nvfp4);
  // FP8 has no block along K: the same shapes stay FP8.
  const quant_plan fp8 = plan_quantization(parse("quantize:\n  default: fp8\n"), spec);
  EXPECT_EQ(decision(fp8, spec, "l0.moe.experts.0.up_proj").weight.format, format_id::fp8_per_tensor);
  EXPECT_EQ(decision(fp8, spec, "l0.moe.experts.0.down_proj").note, "");
}

TEST(RecipePlan, ShapeFallbackInAModelFromItsConfig) {
  // Mixtral with an expert width of 14344 (= 8 mod 16): w2 cannot be NVFP4, so neither can w1 / w3.
  std::ifstream in(source_dir() / "tests" / "data" / "configs" / "mixtral-8x7b-v0.1.json");
  ASSERT_TRUE(in) << "tests/data/configs/mixtral-8x7b-v0.1.json";
  nlohmann::json cfg = nlohmann::json::parse(in);
  cfg["intermediate_size"] = 14344;
  cfg["num_hidden_layers"] = 2;
  const model_spec spec = model_spec_from_config(cfg, "mixtral-patched");
  const quant_plan plan = plan_quantization(load_recipe("llama_nvfp4"), spec);
  const std::string expert = "model.layers.1.block_sparse_moe.experts.5";
  EXPECT_THAT(decision(plan, spec, expert + ".w2").note, HasSubstr("14344"));
  EXPECT_EQ(decision(plan, spec, expert + ".w1").weight.format, format_id::bf16);
  EXPECT_THAT(decision(plan, spec, expert + ".w3").note,
              HasSubstr("fused with model.layers.1.block_sparse_moe.experts.0.w2, which stays BF16"));
  EXPECT_EQ(decision(plan, spec, "model.layers.1.self_attn.q_proj").weight.format, format_id::nvfp4);
}

TEST(RecipePlan, RulesThatSplitAQuantGroupAreAnError) {
  const model_spec spec = toy_spec();
  try {
    plan_quantization(parse(R"(quantize:
  rules:
    - match: "*q_proj"
      format: fp8
    - match: ["*k_proj", "*v_proj"]
      format: nvfp4
)"),
                      spec);
    FAIL() << "no error";
  } catch (const io_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("x.yaml: quant group 'l0.attn' mixes formats: l0.attn.q_proj gets fp8 from the "
                                    "rule at line 3, l0.attn.k_proj gets nvfp4 from the rule at line 5"));
  }
  try {
    plan_quantization(parse("quantize:\n  rules:\n    - match: '*q_proj'\n      format: fp8\n"), spec);
    FAIL() << "no error";
  } catch (const io_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("l0.attn.k_proj gets bf16 from the default"));
  }
}

// Fused siblings share one weight_scale_2: one NVFP4 normalizer for all of them. mse+four_over_six
// picks its own per tensor, and four_over_six (256) beside mse (448) splits them too; an unfused
// linear may take either.
TEST(RecipePlan, FusedSiblingsNeedOneNvfp4Normalizer) {
  const model_spec spec = toy_spec();
  const auto refusal = [&](const std::string& yaml) {
    try {
      plan_quantization(parse(yaml), spec);
    } catch (const io_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_THAT(refusal("quantize:\n  default: {format: nvfp4, weights: mse+four_over_six}\n"),
              HasSubstr("share one weight_scale_2"));
  EXPECT_THAT(refusal("quantize:\n  default: {format: nvfp4, weights: mse}\n  rules:\n    - match: '*q_proj'\n"
                      "      format: nvfp4\n      weights: four_over_six\n"),
              HasSubstr("l0.attn.q_proj gets nvfp4/four_over_six from the rule at line 4, l0.attn.k_proj gets "
                        "nvfp4/mse from the default"));
  EXPECT_EQ(refusal("quantize:\n  default: {format: nvfp4, weights: four_over_six}\n"), "");
  EXPECT_EQ(refusal("quantize:\n  default: {format: nvfp4, weights: mse}\n  rules:\n    - match: '*o_proj'\n"
                    "      format: nvfp4\n      weights: mse+four_over_six\n"),
            "");
}

TEST(RecipePlan, RulesThatMatchNothingWarn) {
  const quant_plan plan = plan_quantization(
      parse("quantize:\n  rules:\n    - match: ['*o_proj', '*nothing*']\n      format: fp8\n"), toy_spec());
  EXPECT_THAT(plan.warnings, ElementsAre("x.yaml:3: rule '*nothing*' matches no module of this model"));
}

// ---- built-in and shipped recipes ------------------------------------------------------------

const std::vector<std::string> kShipped = {
    "auto_nemotron_nvfp4_fp8_4p8bits", "auto_nemotron_nvfp4_fp8_5p0bits", "auto_nemotron_nvfp4_fp8_5p4bits",
    "auto_nemotron_nvfp4_fp8_6p0bits", "auto_nvfp4_fp8_4p8bits", "auto_nvfp4_fp8_5p0bits", "auto_nvfp4_fp8_5p4bits",
    "auto_nvfp4_fp8_6p0bits",
    "llama_fp8",          "llama_nvfp4",          "mamba_moe_fp8_aggressive",     "mamba_moe_fp8_conservative",
    "mamba_moe_nvfp4_aggressive", "mamba_moe_nvfp4_conservative", "moe_nvfp4", "nemotron_super_nvfp4_release"};

TEST(RecipeBuiltin, EveryShippedRecipeIsBuiltInAndParses) {
  EXPECT_EQ(builtin_recipe_names(), kShipped);
  for (const std::string& name : kShipped) {
    const recipe r = load_recipe(name);
    EXPECT_EQ(r.name, name);
    EXPECT_EQ(r.origin, "built-in:" + name);
    EXPECT_FALSE(r.description.empty()) << name;
    EXPECT_EQ(r.calibration.data, "") << name;
    EXPECT_EQ(r.calibration.samples, 64) << name;
    EXPECT_EQ(r.calibration.seq_len, 256) << name;
    EXPECT_EQ(r.default_weight.format, format_id::bf16) << name;
    EXPECT_EQ(load_recipe(name + ".yaml").rules.size(), r.rules.size()) << name;
    EXPECT_EQ(r.search.enabled, name.starts_with("auto_")) << name;
    if (r.search.enabled) { EXPECT_EQ(r.search.effective_bits, std::stod(name.substr(name.size() - 7, 3).replace(1, 1, "."))) << name; }
    // The compiled-in text is the file's.
    const recipe file = load_recipe((source_dir() / "recipes" / (name + ".yaml")).string());
    EXPECT_EQ(file.origin, (source_dir() / "recipes" / (name + ".yaml")).string());
    ASSERT_EQ(file.rules.size(), r.rules.size()) << name;
    for (size_t i = 0; i < r.rules.size(); ++i) {
      EXPECT_EQ(file.rules[i].pattern, r.rules[i].pattern) << name;
      EXPECT_EQ(describe(file.rules[i].weight), describe(r.rules[i].weight)) << name;
      EXPECT_EQ(file.rules[i].line, r.rules[i].line) << name;
    }
  }
}

TEST(RecipeBuiltin, UnknownNamesListTheBuiltIns) {
  try {
    load_recipe("mamba_moe_fp4");
    FAIL() << "no error";
  } catch (const io_error& e) {
    EXPECT_THAT(e.what(), HasSubstr("recipe 'mamba_moe_fp4' is neither a file nor a built-in recipe (built-in: "
                                    "auto_nemotron_nvfp4_fp8_4p8bits, "));
    EXPECT_THAT(e.what(), HasSubstr("llama_fp8, llama_nvfp4, mamba_moe_fp8_aggressive"));
  }
}

TEST(RecipeBuiltin, LoadsAFileAndNamesItInErrors) {
  const fs::path path = fs::temp_directory_path() / ("mixq-recipe-" + std::to_string(::getpid()) + ".yaml");
  {
    std::ofstream out(path);
    out << "quantize:\n  default: fp8\nkv_cache: fp16\n";
  }
  try {
    load_recipe(path.string());
    ADD_FAILURE() << "no error";
  } catch (const io_error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path.string() + ":3: unknown kv_cache 'fp16'"));
  }
  std::ofstream(path).close();  // empty: the parser's message, not a read error
  try {
    load_recipe(path.string());
    ADD_FAILURE() << "no error";
  } catch (const io_error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path.string() + ":1: the recipe must be a mapping, not empty"));
  }
  {
    std::ofstream out(path);
    out << "quantize:\n  default: fp8\n";
  }
  const recipe r = load_recipe(path.string());
  EXPECT_EQ(r.name, path.stem().string());
  EXPECT_EQ(r.default_weight.format, format_id::fp8_per_tensor);
  fs::remove(path);
}

// The config of a model in ../shared/models, or empty (the test skips; fails under CI=true).
fs::path shared_config(const std::string& model) {
  const fs::path p = source_dir() / ".." / "shared" / "models" / model / "config.json";
  return fs::exists(p) ? p : fs::path{};
}
bool on_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}
#define MIXQ_REQUIRE_SHARED_CONFIG(var, model)                                         \
  const fs::path var = shared_config(model);                                           \
  if (var.empty()) {                                                                   \
    if (on_ci()) FAIL() << "../shared/models/" model " is missing (CI needs ../shared)"; \
    GTEST_SKIP() << "../shared/models/" model " not found; skipping";                  \
  }

model_spec in_repo_config(const std::string& file) {
  return model_spec_from_file(source_dir() / "tests" / "data" / "configs" / file);
}

std::set<std::string> warned_patterns(const quant_plan& plan) {
  std::set<std::string> patterns;
  for (const std::string& w : plan.warnings) {
    const size_t open = w.find('\''), close = w.find('\'', open + 1);
    patterns.insert(w.substr(open + 1, close - open - 1));
  }
  return patterns;
}

format_id format_of(const quant_plan& plan, const model_spec& spec, const std::string& module) {
  return decision(plan, spec, module).weight.format;
}

TEST(RecipeShipped, MambaMoePresetsOnNemotronHTiny) {
  MIXQ_REQUIRE_SHARED_CONFIG(config, "nemotron-h-tiny");
  const model_spec spec = model_spec_from_file(config);  // pattern MEM*EMEM*E, latent MoE, no MTP
  struct expectation {
    std::string recipe;
    format_id quantized;
    bool mamba_quantized;
  };
  for (const expectation& x : {expectation{"mamba_moe_fp8_aggressive", format_id::fp8_per_tensor, true},
                               expectation{"mamba_moe_fp8_conservative", format_id::fp8_per_tensor, false},
                               expectation{"mamba_moe_nvfp4_aggressive", format_id::nvfp4, true},
                               expectation{"mamba_moe_nvfp4_conservative", format_id::nvfp4, false}}) {
    SCOPED_TRACE(x.recipe);
    const recipe r = load_recipe(x.recipe);
    EXPECT_EQ(r.kv_cache, kv_cache_format::none);
    const quant_plan plan = plan_quantization(r, spec);
    const format_id mamba = x.mamba_quantized ? x.quantized : format_id::bf16;
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.experts.0.up_proj"), x.quantized);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.experts.15.down_proj"), x.quantized);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.shared_experts.up_proj"), x.quantized);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.shared_experts.down_proj"), x.quantized);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.0.mixer.in_proj"), mamba);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.2.mixer.out_proj"), mamba);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.3.mixer.q_proj"), format_id::bf16);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.3.mixer.o_proj"), format_id::bf16);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.fc1_latent_proj"), format_id::bf16);
    EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.gate"), format_id::bf16);
    EXPECT_EQ(format_of(plan, spec, "lm_head"), format_id::bf16);
    for (const linear_decision& d : plan.linears) {
      EXPECT_EQ(d.note, "");
      if (d.weight.format != format_id::bf16) { EXPECT_EQ(d.weight.nvfp4, nvfp4_selector::max); }
    }
    // The tiny model has no MTP head and no dense MLP ('-') blocks.
    EXPECT_EQ(warned_patterns(plan), (std::set<std::string>{"mtp.*", "*mixer.up_proj", "*mixer.down_proj"}));
  }
}

TEST(RecipeShipped, SuperReleaseOnTheSuperConfig) {
  const model_spec spec = in_repo_config("nemotron3-super-120b-a12b.json");
  const recipe r = load_recipe("nemotron_super_nvfp4_release");
  EXPECT_EQ(r.kv_cache, kv_cache_format::fp8);
  const quant_plan plan = plan_quantization(r, spec);
  EXPECT_THAT(plan.warnings, IsEmpty());
  const linear_decision& expert = decision(plan, spec, "backbone.layers.1.mixer.experts.511.down_proj");
  EXPECT_EQ(expert.weight.format, format_id::nvfp4);
  EXPECT_EQ(expert.weight.nvfp4, nvfp4_selector::mse_fp8_sweep);
  EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.shared_experts.up_proj"), format_id::fp8_per_tensor);
  EXPECT_EQ(format_of(plan, spec, "backbone.layers.0.mixer.in_proj"), format_id::fp8_per_tensor);
  EXPECT_EQ(format_of(plan, spec, "backbone.layers.0.mixer.out_proj"), format_id::fp8_per_tensor);
  EXPECT_EQ(format_of(plan, spec, "backbone.layers.7.mixer.q_proj"), format_id::bf16);
  EXPECT_EQ(format_of(plan, spec, "backbone.layers.7.mixer.o_proj"), format_id::bf16);
  EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.fc2_latent_proj"), format_id::bf16);
  EXPECT_EQ(format_of(plan, spec, "backbone.layers.1.mixer.gate"), format_id::bf16);
  EXPECT_EQ(format_of(plan, spec, "mtp.layers.1.mixer.experts.0.up_proj"), format_id::bf16);
  EXPECT_EQ(format_of(plan, spec, "mtp.layers.0.eh_proj"), format_id::bf16);
  EXPECT_EQ(format_of(plan, spec, "lm_head"), format_id::bf16);
  for (const linear_decision& d : plan.linears) EXPECT_EQ(d.note, "");
}

TEST(RecipeShipped, LlamaRecipesOnStories260K) {
  MIXQ_REQUIRE_SHARED_CONFIG(config, "stories260K");
  const model_spec spec = model_spec_from_file(config);  // tied lm_head, intermediate 172
  const quant_plan fp8 = plan_quantization(load_recipe("llama_fp8"), spec);
  EXPECT_EQ(load_recipe("llama_fp8").kv_cache, kv_cache_format::fp8);
  for (const linear_decision& d : fp8.linears) {
    EXPECT_EQ(d.weight.format, format_id::fp8_per_tensor);
    EXPECT_EQ(d.weight.fp8, fp8_selector::max);
  }
  EXPECT_EQ(warned_patterns(fp8), std::set<std::string>{"*block_sparse_moe.experts.*"});

  const quant_plan nvfp4 = plan_quantization(load_recipe("llama_nvfp4"), spec);
  const linear_decision& q = decision(nvfp4, spec, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(q.weight.format, format_id::nvfp4);
  EXPECT_EQ(q.weight.nvfp4, nvfp4_selector::four_over_six);
  EXPECT_EQ(format_of(nvfp4, spec, "model.layers.4.mlp.gate_proj"), format_id::nvfp4);
  EXPECT_EQ(format_of(nvfp4, spec, "model.layers.4.mlp.up_proj"), format_id::nvfp4);
  // down_proj's K is 172; its gate / up siblings are a different quant group and keep NVFP4.
  const linear_decision& down = decision(nvfp4, spec, "model.layers.4.mlp.down_proj");
  EXPECT_EQ(down.weight.format, format_id::bf16);
  EXPECT_EQ(down.rule, 1);  // the second glob of the rule: "*.mlp.*_proj"
  EXPECT_THAT(down.note, HasSubstr("172"));
  EXPECT_EQ(warned_patterns(nvfp4), std::set<std::string>{"*block_sparse_moe.experts.*"});
}

TEST(RecipeShipped, LlamaRecipesOnMixtralAndQwen3) {
  const model_spec mixtral = in_repo_config("mixtral-8x7b-v0.1.json");
  const model_spec qwen3 = in_repo_config("qwen3-30b-a3b.json");
  for (const std::string name : {"llama_fp8", "llama_nvfp4"}) {
    SCOPED_TRACE(name);
    const recipe r = load_recipe(name);
    const format_id f = name == "llama_fp8" ? format_id::fp8_per_tensor : format_id::nvfp4;
    const quant_plan m = plan_quantization(r, mixtral);
    EXPECT_EQ(format_of(m, mixtral, "model.layers.3.block_sparse_moe.experts.7.w2"), f);
    EXPECT_EQ(format_of(m, mixtral, "model.layers.3.self_attn.k_proj"), f);
    EXPECT_EQ(format_of(m, mixtral, "model.layers.3.block_sparse_moe.gate"), format_id::bf16);
    EXPECT_EQ(format_of(m, mixtral, "lm_head"), format_id::bf16);
    EXPECT_EQ(warned_patterns(m), std::set<std::string>{"*.mlp.*_proj"});
    const quant_plan q = plan_quantization(r, qwen3);
    EXPECT_EQ(format_of(q, qwen3, "model.layers.0.mlp.experts.127.down_proj"), f);
    EXPECT_EQ(format_of(q, qwen3, "model.layers.0.self_attn.o_proj"), f);
    EXPECT_EQ(format_of(q, qwen3, "model.layers.0.mlp.gate"), format_id::bf16);
    EXPECT_EQ(decision(q, qwen3, "model.layers.0.mlp.gate").note, "");
    EXPECT_EQ(format_of(q, qwen3, "lm_head"), format_id::bf16);
    EXPECT_EQ(warned_patterns(q), std::set<std::string>{"*block_sparse_moe.experts.*"});
  }
}

TEST(RecipeShipped, MoeNvfp4) {
  const recipe r = load_recipe("moe_nvfp4");
  EXPECT_EQ(r.kv_cache, kv_cache_format::fp8);
  const model_spec qwen3 = in_repo_config("qwen3-30b-a3b.json");
  const quant_plan q = plan_quantization(r, qwen3);
  EXPECT_EQ(format_of(q, qwen3, "model.layers.5.mlp.experts.3.gate_proj"), format_id::nvfp4);
  EXPECT_EQ(format_of(q, qwen3, "model.layers.5.self_attn.v_proj"), format_id::fp8_per_tensor);
  EXPECT_EQ(format_of(q, qwen3, "model.layers.5.mlp.gate"), format_id::bf16);
  EXPECT_EQ(format_of(q, qwen3, "lm_head"), format_id::bf16);
  EXPECT_EQ(warned_patterns(q), (std::set<std::string>{"*.shared_experts.*", "*mixer.?_proj"}));

  MIXQ_REQUIRE_SHARED_CONFIG(config, "nemotron-h-tiny");
  const model_spec spec = model_spec_from_file(config);
  const quant_plan n = plan_quantization(r, spec);
  EXPECT_EQ(format_of(n, spec, "backbone.layers.1.mixer.experts.2.down_proj"), format_id::nvfp4);
  EXPECT_EQ(format_of(n, spec, "backbone.layers.1.mixer.shared_experts.down_proj"), format_id::nvfp4);
  EXPECT_EQ(format_of(n, spec, "backbone.layers.3.mixer.k_proj"), format_id::fp8_per_tensor);
  EXPECT_EQ(format_of(n, spec, "backbone.layers.0.mixer.in_proj"), format_id::bf16);
  EXPECT_EQ(format_of(n, spec, "backbone.layers.1.mixer.gate"), format_id::bf16);
  EXPECT_EQ(warned_patterns(n), std::set<std::string>{"*self_attn.?_proj"});
}

}  // namespace
}  // namespace mixq

namespace mixq {
namespace {

TEST(RecipeSearch, ParsesEveryKey) {
  const recipe r = parse(
      "search:\n  effective_bits: 5.4\n  candidates:\n    - nvfp4\n    - {format: fp8, weights: mse}\n    - bf16\n"
      "  method: kl\n  score_samples: 3\n  disable: ['lm_head', 'mtp.*']\n  cost: active_moe\n");
  ASSERT_TRUE(r.search.enabled);
  EXPECT_EQ(r.search.effective_bits, 5.4);
  ASSERT_EQ(r.search.candidates.size(), 2u);  // bf16 is always a candidate, not listed
  EXPECT_EQ(r.search.candidates[0].format, format_id::nvfp4);
  EXPECT_EQ(r.search.candidates[1].fp8, fp8_selector::mse);
  EXPECT_EQ(r.search.method, score_method::kl);
  EXPECT_EQ(r.search.score_samples, 3);
  ASSERT_EQ(r.search.disable.size(), 2u);
  EXPECT_EQ(r.search.disable[1], (std::pair<std::string, int>{"mtp.*", 9}));
  EXPECT_EQ(r.search.cost, cost_model::active_moe);
}

TEST(RecipeSearch, ErrorsNameTheLine) {
  EXPECT_THAT(parse_error("search:\n  candidates: [nvfp4]\n"), HasSubstr("x.yaml:2: missing key 'effective_bits'"));
  EXPECT_THAT(parse_error("search:\n  effective_bits: 17\n  candidates: [nvfp4]\n"), HasSubstr("x.yaml:2: search.effective_bits cannot exceed 16"));
  EXPECT_THAT(parse_error("search:\n  effective_bits: -1\n  candidates: [nvfp4]\n"), HasSubstr("x.yaml:2: search.effective_bits must be a positive number"));
  EXPECT_THAT(parse_error("search:\n  effective_bits: 5\n  candidates: [bf16]\n"), HasSubstr("x.yaml:3: search.candidates needs at least one format besides bf16"));
  EXPECT_THAT(parse_error("search:\n  effective_bits: 5\n  candidates: [nvfp4, nvfp4]\n"), HasSubstr("listed twice"));
  EXPECT_THAT(parse_error("search:\n  effective_bits: 5\n  candidates: [nvfp4]\n  method: taylor\n"), HasSubstr("x.yaml:4: unknown search.method 'taylor'"));
  EXPECT_THAT(parse_error("search:\n  effective_bits: 5\n  candidates: [nvfp4]\n  budget: 3\n"), HasSubstr("x.yaml:4: unknown key 'budget' in search"));
  EXPECT_THAT(parse_error("search:\n  effective_bits: 5\n  candidates: [nvfp4]\nquantize:\n  rules: []\n"), HasSubstr("x.yaml:5: a recipe with 'search' chooses the formats itself"));
}

}  // namespace
}  // namespace mixq
