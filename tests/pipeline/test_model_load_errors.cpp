// Loading and running a model on bad input: a checkpoint whose tensors disagree with its config.json,
// config options the FP32 forward pass does not implement, sequences the model cannot take. Each
// error names the file, the tensor or config key, and the value that is wrong.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "pipeline/eval/perplexity.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/safetensors_writer.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/model/nemotron_h.hpp"
#include "pipeline/quantize/quantize_run.hpp"
#include "model_test_support.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using testing::synth_dir;

std::string load_error(const fs::path& dir) {
  try {
    load_causal_lm(dir);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// The message of what `f` throws, "" when it throws nothing.
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::string config_json(const synth_dir& d) { return (d.dir / "config.json").string(); }

// A tensor to write back: its bytes owned here.
struct owned_tensor {
  std::string name;
  dtype type;
  std::vector<int64_t> shape;
  std::vector<std::byte> bytes;
};

// Rewrites dir/model.safetensors with `edit` applied to its tensors.
void edit_tensors(const fs::path& dir, const std::function<void(std::vector<owned_tensor>&)>& edit) {
  std::vector<owned_tensor> tensors;
  {
    const safetensors_file f = safetensors_file::open(dir / "model.safetensors");
    for (const tensor_info& t : f.tensors()) {
      const auto b = f.bytes(t);
      tensors.push_back({t.name, t.type, t.shape, std::vector<std::byte>(b.begin(), b.end())});
    }
  }
  edit(tensors);
  std::vector<tensor_to_write> out;
  for (const owned_tensor& t : tensors) out.push_back({t.name, t.type, t.shape, t.bytes});
  sort_for_alignment(out);
  write_safetensors(dir / "model.safetensors", out);
}

owned_tensor& find(std::vector<owned_tensor>& tensors, const std::string& name) {
  for (owned_tensor& t : tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}

// ---- tensors against config.json ---------------------------------------------------------------

TEST(model_load_errors, tensor_with_wrong_shape_names_file_tensor_and_both_shapes) {
  for (const auto& [arch, name] : {std::pair{synth_arch::llama, "model.layers.1.mlp.down_proj.weight"},
                                   std::pair{synth_arch::nemotron_h, "backbone.layers.0.mixer.in_proj.weight"}}) {
    const synth_dir d(arch);
    std::vector<int64_t> want;
    edit_tensors(d.dir, [&](std::vector<owned_tensor>& t) {
      owned_tensor& w = find(t, name);
      want = w.shape;
      const size_t row_bytes = w.bytes.size() / size_t(w.shape[0]);
      w.shape[0] -= 1;  // one row short
      w.bytes.resize(w.bytes.size() - row_bytes);
    });
    const std::string e = load_error(d.dir);
    EXPECT_THAT(e, StartsWith((d.dir / "model.safetensors").string() + ": "));
    EXPECT_THAT(e, HasSubstr(fmt::format("tensor '{}' has shape [{}, {}], config.json implies [{}, {}]", name,
                                         want[0] - 1, want[1], want[0], want[1])));
  }
}

TEST(model_load_errors, a_config_that_disagrees_with_the_tensors_names_the_first_tensor) {
  const synth_dir d(synth_arch::llama);
  const int64_t hidden = testing::read_json(d.dir / "config.json").at("hidden_size").get<int64_t>();
  d.patch_config({{"hidden_size", 2 * hidden}, {"head_dim", 2 * hidden / 4}});
  const std::string e = load_error(d.dir);
  EXPECT_THAT(e, StartsWith((d.dir / "model.safetensors").string() + ": "));
  EXPECT_THAT(e, HasSubstr(fmt::format("tensor 'model.embed_tokens.weight' has shape [512, {}], config.json implies "
                                       "[512, {}]", hidden, 2 * hidden)));
}

TEST(model_load_errors, missing_tensor_is_named) {
  for (const auto& [arch, name] : {std::pair{synth_arch::llama, "model.layers.1.post_attention_layernorm.weight"},
                                   std::pair{synth_arch::nemotron_h, "backbone.layers.2.mixer.D"},
                                   std::pair{synth_arch::nemotron_h, "backbone.layers.1.mixer.experts.3.down_proj.weight"}}) {
    const synth_dir d(arch);
    edit_tensors(d.dir, [&](std::vector<owned_tensor>& t) { std::erase_if(t, [&](auto& x) { return x.name == name; }); });
    EXPECT_THAT(load_error(d.dir),
                HasSubstr(fmt::format("tensor '{}' is missing: config.json describes it, no file of the checkpoint "
                                      "holds it", name)));
  }
}

// A tensor no part of the configured model reads means the config describes another model (fewer
// layers or experts, no bias, tied embeddings): refused, not ignored.
TEST(model_load_errors, unexpected_model_tensor_is_refused) {
  {  // one layer fewer in config.json than in the checkpoint
    const synth_dir d(synth_arch::llama);
    d.patch_config({{"num_hidden_layers", 1}});
    const std::string e = load_error(d.dir);
    EXPECT_THAT(e, StartsWith((d.dir / "model.safetensors").string() + ": unexpected tensor 'model.layers.1."));
    EXPECT_THAT(e, HasSubstr("config.json describes a llama model of 1 layers without it; the "
                             "checkpoint and its config.json disagree (9 unexpected tensors in all)"));
  }
  {  // an expert beyond n_routed_experts
    const synth_dir d(synth_arch::nemotron_h);
    edit_tensors(d.dir, [](std::vector<owned_tensor>& t) {
      owned_tensor extra = find(t, "backbone.layers.1.mixer.experts.7.up_proj.weight");
      extra.name = "backbone.layers.1.mixer.experts.8.up_proj.weight";
      t.push_back(extra);
    });
    const std::string e = load_error(d.dir);
    EXPECT_THAT(e, HasSubstr("model.safetensors: unexpected tensor 'backbone.layers.1.mixer.experts.8.up_proj.weight' "
                             "[32, 32]: config.json describes a nemotron_h model of 6 layers"));
    EXPECT_THAT(e, Not(HasSubstr("in all")));
  }
  {  // tied embeddings, but an lm_head stored
    const synth_dir d(synth_arch::llama);
    d.patch_config({{"tie_word_embeddings", true}});
    EXPECT_THAT(load_error(d.dir), HasSubstr("unexpected tensor 'lm_head.weight' [512, 64]"));
  }
}

// ---- config options --------------------------------------------------------------------------

// The error for `patch` applied to a synthetic `arch` checkpoint's config.json; it must start with
// the config.json path.
std::string config_error_of(synth_arch arch, const json& patch) {
  const synth_dir d(arch);
  d.patch_config(patch);
  const std::string e = load_error(d.dir);
  EXPECT_THAT(e, StartsWith(config_json(d) + ": ")) << patch.dump();
  return e;
}

TEST(model_load_errors, unsupported_llama_options_name_config_key_and_value) {
  const auto llama = synth_arch::llama;
  EXPECT_THAT(config_error_of(llama, {{"hidden_act", "gelu"}}),
              HasSubstr("unsupported option: config key 'hidden_act' is \"gelu\" (only silu is implemented)"));
  EXPECT_THAT(config_error_of(llama, {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}}}),
              HasSubstr("unsupported option: config key 'rope_scaling' has rope type 'yarn' (only 'default' and "
                        "'llama3' RoPE are implemented)"));
  EXPECT_THAT(config_error_of(llama, {{"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}}),
              HasSubstr("config key 'rope_scaling' has rope type 'dynamic'"));
  EXPECT_THAT(config_error_of(llama, {{"partial_rotary_factor", 0.5}}),
              HasSubstr("unsupported option: config key 'partial_rotary_factor' is 0.5"));
  EXPECT_THAT(config_error_of(llama, {{"max_position_embeddings", 0}}),
              HasSubstr("config key 'max_position_embeddings' must be a positive integer, got 0"));
  EXPECT_THAT(config_error_of(llama, {{"quantization_config", {{"quant_method", "gptq"}, {"bits", 4}}}}),
              HasSubstr("unsupported option: config key 'quantization_config.quant_method' is \"gptq\""));
  EXPECT_THAT(config_error_of(synth_arch::mixtral, {{"sliding_window", 4096}}),
              HasSubstr("unsupported option: config key 'sliding_window' is 4096"));
  EXPECT_THAT(config_error_of(llama, {{"architectures", {"FalconForCausalLM"}}, {"model_type", "falcon"}}),
              HasSubstr("unsupported architecture FalconForCausalLM / falcon; supported: LlamaForCausalLM (llama)"));
  EXPECT_THAT(config_error_of(llama, {{"num_key_value_heads", 3}}),
              HasSubstr("config key 'num_attention_heads' (4) is not a multiple of 'num_key_value_heads' (3)"));
}

TEST(model_load_errors, unsupported_nemotron_h_options_name_config_key_and_value) {
  const auto nh = synth_arch::nemotron_h;
  EXPECT_THAT(config_error_of(nh, {{"mlp_hidden_act", "silu"}}),
              HasSubstr("unsupported option: config key 'mlp_hidden_act' is \"silu\" (only relu2 is implemented)"));
  EXPECT_THAT(config_error_of(nh, {{"mamba_hidden_act", "gelu"}}),
              HasSubstr("unsupported option: config key 'mamba_hidden_act' is \"gelu\" (only silu is implemented)"));
  EXPECT_THAT(config_error_of(nh, {{"n_group", 2}}),
              HasSubstr("unsupported option: config key 'n_group' is 2 (grouped expert selection is not implemented"));
  EXPECT_THAT(config_error_of(nh, {{"n_groups", 3}}),
              HasSubstr("config key 'mamba_num_heads' (4) is not a multiple of 'n_groups' (3)"));
  EXPECT_THAT(config_error_of(nh, {{"num_experts_per_tok", 9}}),
              HasSubstr("unsupported option: config key 'num_experts_per_tok' is 9, more than the 8 experts"));
  EXPECT_THAT(config_error_of(nh, {{"time_step_limit", {0.1, 0.01}}}),
              HasSubstr("config key 'time_step_limit' must be [min, max] with 0 <= min < max, got [0.1,0.01]"));
  EXPECT_THAT(config_error_of(nh, {{"mamba_dt_limit", {-1.0, nullptr}}}),
              HasSubstr("config key 'mamba_dt_limit' must be [min, max]"));
  EXPECT_THAT(config_error_of(nh, {{"hybrid_override_pattern", "MEM*EX"}}),
              HasSubstr("config key 'hybrid_override_pattern': character 'X' at position 5"));
  EXPECT_THAT(config_error_of(nh, {{"max_position_embeddings", 1.5}}),
              HasSubstr("config key 'max_position_embeddings' must be a positive integer, got 1.5"));
}

// time_step_limit in each spelling a config.json holds: the upper bound may be null, infinite in
// transformers 5's {"__float__": "Infinity"}, a string, or Python json's bare Infinity (not JSON).
TEST(model_load_errors, time_step_limit_spellings) {
  const synth_dir d(synth_arch::nemotron_h);
  const std::vector<int32_t> tokens = {1, 5, 7, 9, 11, 300, 42, 17};
  const std::vector<float> unclamped = nemotron_h_model::load(d.dir).forward(tokens);
  for (const json& hi : {json(nullptr), json{{"__float__", "Infinity"}}, json("inf"), json(1e30)}) {
    d.patch_config({{"time_step_limit", {0.0, hi}}});
    const nemotron_h_model m = nemotron_h_model::load(d.dir);
    EXPECT_EQ(m.config().dt_min, 0.0f) << hi.dump();
    EXPECT_EQ(m.forward(tokens), unclamped) << hi.dump();
  }
  {  // bare Infinity, as json.dumps writes float("inf")
    std::ifstream in(d.dir / "config.json");
    std::stringstream text;
    text << in.rdbuf();
    in.close();
    const std::string original = text.str();
    std::string s = original;
    const size_t at = s.find("\"time_step_limit\"");
    ASSERT_NE(at, std::string::npos);
    const size_t end = s.find(']', at);
    s.replace(at, end + 1 - at, "\"time_step_limit\": [0.001, Infinity]");
    std::ofstream(d.dir / "config.json") << s;
    const nemotron_h_model m = nemotron_h_model::load(d.dir);
    EXPECT_EQ(m.config().dt_min, 0.001f);
    EXPECT_EQ(m.config().dt_max, std::numeric_limits<float>::infinity());
    std::ofstream(d.dir / "config.json") << original;  // valid JSON again for patch_config
  }
  // the legacy key, and an upper clamp that changes the output
  d.patch_config({{"time_step_limit", nullptr}, {"mamba_dt_limit", {0.0, 0.01}}});
  const nemotron_h_model capped = nemotron_h_model::load(d.dir);
  EXPECT_EQ(capped.config().dt_max, 0.01f);
  EXPECT_NE(capped.forward(tokens), unclamped);
}

// ---- sequences the model cannot take -------------------------------------------------------

TEST(model_load_errors, sequence_longer_than_max_position_embeddings) {
  for (const synth_arch arch : {synth_arch::llama, synth_arch::nemotron_h}) {
    const synth_dir d(arch);
    d.patch_config({{"max_position_embeddings", 16}});
    const auto model = load_causal_lm(d.dir);
    const char* name = arch == synth_arch::llama ? "llama" : "nemotron_h";
    const std::vector<int32_t> long_seq(17, 5), ok(16, 5);
    const std::string limit = fmt::format("17 tokens, more than the model allows: max_position_embeddings is 16 in {}",
                                          config_json(d));
    EXPECT_EQ(error_of([&] { model->forward(long_seq); }), fmt::format("{} forward: {}", name, limit));
    EXPECT_EQ(error_of([&] { model->forward_backward(long_seq); }), fmt::format("{} forward_backward: {}", name, limit));
    EXPECT_EQ(error_of([&] { model->forward(ok); }), "");
    // eval: the window, however long the token stream
    const std::vector<int32_t> stream(100, 5);
    EXPECT_EQ(error_of([&] { evaluate_perplexity(*model, stream, 17); }),
              fmt::format("perplexity: ctx 17 is more than the model allows: max_position_embeddings is 16 in {}",
                          config_json(d)));
    EXPECT_EQ(error_of([&] { evaluate_perplexity(*model, stream, 16); }), "");
    EXPECT_THAT(error_of([&] { model->forward_backward(std::vector<int32_t>{5}); }),
                HasSubstr("1 tokens; needs at least 2"));
  }
}

TEST(model_load_errors, token_id_outside_the_vocabulary_names_its_position) {
  for (const synth_arch arch : {synth_arch::llama, synth_arch::nemotron_h}) {
    const synth_dir d(arch);
    const auto model = load_causal_lm(d.dir);
    EXPECT_THAT(error_of([&] { model->forward(std::vector<int32_t>{1, 2, 512, 3}); }),
                HasSubstr("forward: token id 512 at position 2 is outside the vocabulary (vocab_size 512)"));
    EXPECT_THAT(error_of([&] { model->forward_backward(std::vector<int32_t>{-1, 2}); }),
                HasSubstr("forward_backward: token id -1 at position 0 is outside the vocabulary"));
  }
}

// Calibration and verification lengths: asked for explicitly, above the limit is an error; a
// recipe's seq_len (written for many models) is capped.
TEST(model_load_errors, quantize_seq_len_and_eval_ctx_above_the_limit) {
  const synth_dir d(synth_arch::llama);
  d.patch_config({{"max_position_embeddings", 64}});
  quantize_request rq;
  rq.model = d.dir;
  rq.out = d.dir.string() + "-out";
  rq.rcp = parse_recipe("name: t\ncalibration:\n  samples: 2\n  seq_len: 128\nquantize:\n  rules:\n"
                        "    - match: \"*\"\n      format: bf16\n",
                        "t.yaml");
  rq.seq_len_explicit = true;
  EXPECT_EQ(error_of([&] { run_quantize(rq); }),
            fmt::format("calibration seq_len 128 is more than {} allows: max_position_embeddings is 64 in {}",
                        d.dir.string(), config_json(d)));
  rq.seq_len_explicit = false;
  rq.eval_ctx = 65;
  EXPECT_THAT(error_of([&] { run_quantize(rq); }),
              HasSubstr("evaluation window (eval ctx) 65 is more than"));
  EXPECT_FALSE(fs::exists(rq.out));
}

}  // namespace
}  // namespace mixq
