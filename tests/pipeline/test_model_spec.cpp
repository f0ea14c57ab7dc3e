// ModelSpec from config.json: the real checkpoints in ../shared hold exactly the tensors the spec
// lists; real configs of Nemotron 3 Super / Nano, Mixtral 8x7B and Qwen3-30B-A3B give the published
// parameter counts; quant groups follow the regex rules of autoquantize-numerics §1.6; bad configs
// and mismatched checkpoints give messages naming the file, key or tensor.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/model/model_spec.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using dims = std::vector<int64_t>;
using tensor_list = std::vector<std::pair<std::string, dims>>;

// The repository root: MIXQ_SOURCE_DIR under ctest, else found from this file's path.
fs::path source_dir() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  return src ? fs::path(src) : fs::path(__FILE__).parent_path().parent_path().parent_path();
}
fs::path config_path(const std::string& name) { return source_dir() / "tests" / "data" / "configs" / name; }

json load_config(const std::string& name) {
  std::ifstream in(config_path(name));
  if (!in) throw std::runtime_error("cannot read " + config_path(name).string());
  return json::parse(in);
}

// ../shared/models/<name> found through MIXQ_SOURCE_DIR; empty when absent (the test then skips).
fs::path shared_model(const std::string& name) {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  if (!src) return {};
  const fs::path dir = fs::path(src) / ".." / "shared" / "models" / name;
  return fs::exists(dir / "config.json") ? dir : fs::path{};
}
bool on_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

tensor_list checkpoint_tensors(const fs::path& dir) {
  const checkpoint ckpt = checkpoint::open(dir);  // entries point into it: keep it alive while reading
  tensor_list out;
  for (const auto& e : ckpt.tensors()) out.emplace_back(e.tensor->name, e.tensor->shape);
  return out;
}

int64_t numel_sum(const tensor_list& tensors) {
  int64_t n = 0;
  for (const auto& [name, shape] : tensors) {
    int64_t m = 1;
    for (int64_t d : shape) m *= d;
    n += m;
  }
  return n;
}

const linear_spec& linear_named(const model_spec& s, const std::string& module) {
  for (const auto& l : s.linears)
    if (l.module == module) return l;
  throw std::runtime_error("no linear " + module);
}
const tensor_spec& tensor_named(const model_spec& s, const std::string& name) {
  for (const auto& t : s.tensors)
    if (t.name == name) return t;
  throw std::runtime_error("no tensor " + name);
}
bool has_linear(const model_spec& s, const std::string& module) {
  return std::any_of(s.linears.begin(), s.linears.end(), [&](const linear_spec& l) { return l.module == module; });
}
bool has_tensor(const model_spec& s, const std::string& name) {
  return std::any_of(s.tensors.begin(), s.tensors.end(), [&](const tensor_spec& t) { return t.name == name; });
}

std::string pattern_of(const model_spec& s, bool mtp) {
  std::string p;
  for (const auto& b : s.blocks) {
    if (b.mtp != mtp) continue;
    p += b.kind == block_kind::mamba ? 'M' : b.kind == block_kind::attention ? '*' : b.kind == block_kind::moe ? 'E' : '-';
  }
  return p;
}

// A message list that must mention every needle.
void expect_mentions(const std::vector<std::string>& messages, const std::vector<std::string>& needles) {
  std::string all;
  for (const auto& m : messages) all += m + "\n";
  for (const auto& n : needles) EXPECT_NE(all.find(n), std::string::npos) << "no message mentions '" << n << "':\n" << all;
}

std::string error_of(const json& config, const std::string& origin = "test-config.json") {
  try {
    model_spec_from_config(config, origin);
  } catch (const io_error& e) {
    return e.what();
  }
  return "";
}

std::string error_of_file(const fs::path& path) {
  try {
    model_spec_from_file(path);
  } catch (const io_error& e) {
    return e.what();
  }
  return "";
}

// ---- real checkpoints -------------------------------------------------------------------------

TEST(model_spec, stories260k_checkpoint_matches_spec) {
  const fs::path dir = shared_model("stories260K");
  if (dir.empty()) {
    if (on_ci()) FAIL() << "../shared/models/stories260K is missing (CI needs ../shared beside the clone)";
    GTEST_SKIP() << "../shared/models/stories260K not found through MIXQ_SOURCE_DIR; skipping the real-checkpoint check";
  }
  const model_spec spec = model_spec_from_file(dir);
  const tensor_list tensors = checkpoint_tensors(dir);
  EXPECT_EQ(check_against_tensors(spec, tensors), std::vector<std::string>{});
  EXPECT_EQ(parameter_count(spec), numel_sum(tensors));
  EXPECT_EQ(parameter_count(spec), 260'032);
  EXPECT_EQ(spec.architecture, "llama");
  EXPECT_EQ(spec.origin, (dir / "config.json").string());
  EXPECT_FALSE(has_linear(spec, "lm_head"));  // tie_word_embeddings
  EXPECT_EQ(spec.blocks.size(), 10u);          // 5 layers x (attention, mlp)
  EXPECT_EQ(linear_named(spec, "model.layers.0.self_attn.k_proj").shape(), dims({32, 64}));  // GQA 4 x 8
}

TEST(model_spec, nemotron_h_tiny_checkpoint_matches_spec) {
  const fs::path dir = shared_model("nemotron-h-tiny");
  if (dir.empty()) {
    if (on_ci()) FAIL() << "../shared/models/nemotron-h-tiny is missing (CI needs ../shared beside the clone)";
    GTEST_SKIP() << "../shared/models/nemotron-h-tiny not found through MIXQ_SOURCE_DIR; skipping the real-checkpoint check";
  }
  const model_spec spec = model_spec_from_file(dir / "config.json");
  const tensor_list tensors = checkpoint_tensors(dir);
  EXPECT_EQ(check_against_tensors(spec, tensors), std::vector<std::string>{});
  EXPECT_EQ(parameter_count(spec), numel_sum(tensors));
  EXPECT_EQ(parameter_count(spec), 508'464);  // the README rounds this to "508,400"
  EXPECT_EQ(pattern_of(spec, false), "MEM*EMEM*E");
  // Mamba-2: I = 4 x 16 = 64, G = 2, N = 16: in_proj rows 2I + 2GN + H = 196, conv channels I + 2GN = 128.
  EXPECT_EQ(linear_named(spec, "backbone.layers.0.mixer.in_proj").shape(), dims({196, 64}));
  EXPECT_EQ(tensor_named(spec, "backbone.layers.0.mixer.conv1d.weight").shape, dims({128, 1, 4}));
  // Latent MoE: experts work at width 32 between fc1 (64 -> 32) and fc2 (32 -> 64).
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.experts.15.up_proj").shape(), dims({64, 32}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.fc1_latent_proj").role, linear_role::latent);
}

// ---- real configs: published sizes ------------------------------------------------------------

TEST(model_spec, nemotron3_nano_counts) {
  const model_spec spec = model_spec_from_config(load_config("nemotron3-nano-30b-a3b.json"), "nano");
  EXPECT_EQ(parameter_count(spec), 31'577'940'288);          // published: 31.6B
  EXPECT_EQ(active_parameter_count(spec), 3'580'076'352);    // published: 3.5B active (3.2B without embeddings)
  EXPECT_NEAR(double(parameter_count(spec)) / 31.6e9, 1.0, 0.01);
  EXPECT_NEAR(double(active_parameter_count(spec)) / 3.5e9, 1.0, 0.03);
  EXPECT_EQ(pattern_of(spec, false), "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME");
  EXPECT_EQ(pattern_of(spec, true), "");
  EXPECT_EQ(spec.dims.moe_latent, 0);
  EXPECT_FALSE(has_linear(spec, "backbone.layers.1.mixer.fc1_latent_proj"));
  // architecture.md §1.3 "Nano numbers"; intermediate = 64 x 64 = 4096, not expand x hidden = 5376.
  EXPECT_EQ(linear_named(spec, "backbone.layers.0.mixer.in_proj").shape(), dims({10304, 2688}));
  EXPECT_EQ(tensor_named(spec, "backbone.layers.0.mixer.conv1d.weight").shape, dims({6144, 1, 4}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.5.mixer.k_proj").shape(), dims({256, 2688}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.experts.127.up_proj").shape(), dims({1856, 2688}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.shared_experts.down_proj").shape(), dims({2688, 3712}));
}

TEST(model_spec, nemotron3_super_counts) {
  const model_spec spec = model_spec_from_config(load_config("nemotron3-super-120b-a12b.json"), "super");
  // The BF16 release's safetensors headers sum to 123,611,033,088 (MTP head included).
  EXPECT_EQ(parameter_count(spec), 123'611'033'088);
  int64_t mtp = 0;
  for (const auto& l : spec.linears)
    if (l.block >= 0 && spec.blocks[size_t(l.block)].mtp) mtp += l.numel();
  for (const auto& t : spec.tensors)
    if (t.block >= 0 && spec.blocks[size_t(t.block)].mtp) mtp += t.numel();
  EXPECT_EQ(parameter_count(spec) - mtp, 120'668'707'840);  // published: 120B total
  EXPECT_NEAR(double(parameter_count(spec) - mtp) / 120e9, 1.0, 0.01);
  // Published "12B active": 12.77B with embeddings and lm_head, 11.70B without.
  EXPECT_EQ(active_parameter_count(spec), 12'770'237'440);
  EXPECT_NEAR(double(active_parameter_count(spec)) / 12e9, 1.0, 0.07);

  EXPECT_EQ(pattern_of(spec, true), "*E");
  EXPECT_EQ(linear_named(spec, "mtp.layers.0.eh_proj").shape(), dims({4096, 8192}));
  EXPECT_TRUE(has_tensor(spec, "mtp.layers.0.enorm.weight"));
  EXPECT_TRUE(has_tensor(spec, "mtp.layers.1.final_layernorm.weight"));
  EXPECT_TRUE(has_linear(spec, "mtp.layers.1.mixer.experts.511.down_proj"));
  EXPECT_FALSE(linear_named(spec, "mtp.layers.1.mixer.experts.0.up_proj").quantizable);
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.fc1_latent_proj").shape(), dims({1024, 4096}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.fc2_latent_proj").shape(), dims({4096, 1024}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.experts.0.up_proj").shape(), dims({2688, 1024}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.experts.0.down_proj").shape(), dims({1024, 2688}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.1.mixer.shared_experts.up_proj").shape(), dims({5376, 4096}));
  EXPECT_EQ(linear_named(spec, "backbone.layers.0.mixer.in_proj").shape(), dims({2 * 8192 + 2 * 8 * 128 + 128, 4096}));
}

TEST(model_spec, mixtral_8x7b_counts) {
  const model_spec spec = model_spec_from_config(load_config("mixtral-8x7b-v0.1.json"), "mixtral");
  EXPECT_EQ(parameter_count(spec), 46'702'792'704);       // published: 46.7B
  EXPECT_EQ(active_parameter_count(spec), 12'879'925'248); // published: 12.9B
  EXPECT_NEAR(double(parameter_count(spec)) / 46.7e9, 1.0, 0.01);
  EXPECT_EQ(spec.dims.head_dim, 128);  // derived: no head_dim in the config
  EXPECT_EQ(linear_named(spec, "model.layers.31.block_sparse_moe.experts.7.w2").shape(), dims({4096, 14336}));
  EXPECT_EQ(linear_named(spec, "model.layers.0.block_sparse_moe.gate").role, linear_role::router);
}

TEST(model_spec, qwen3_30b_a3b_counts) {
  const model_spec spec = model_spec_from_config(load_config("qwen3-30b-a3b.json"), "qwen3");
  EXPECT_EQ(parameter_count(spec), 30'532'122'624);      // published: 30.5B
  EXPECT_EQ(active_parameter_count(spec), 3'353'032'704); // published: 3.3B
  EXPECT_NEAR(double(parameter_count(spec)) / 30.5e9, 1.0, 0.01);
  // head_dim 128 given, not hidden / heads = 64.
  EXPECT_EQ(linear_named(spec, "model.layers.0.self_attn.q_proj").shape(), dims({4096, 2048}));
  EXPECT_EQ(tensor_named(spec, "model.layers.0.self_attn.q_norm.weight").shape, dims({128}));
  EXPECT_EQ(tensor_named(spec, "model.layers.0.self_attn.k_norm.weight").shape, dims({128}));
  EXPECT_EQ(linear_named(spec, "model.layers.47.mlp.experts.127.gate_proj").shape(), dims({768, 2048}));
}

// ---- quant groups and defaults ----------------------------------------------------------------

// autoquantize-numerics §1.6 as ModelOpt writes it: the first matching rule's group(1) is the key.
std::string numerics_group_key(const std::string& module) {
  static const std::vector<std::regex> rules = {
      std::regex(R"(^(.*?)\.(q_proj|k_proj|v_proj)$)"),
      std::regex(R"(^(.*?\.mlp\.experts)\.\d+\.(gate_proj|up_proj|down_proj)$)"),
      std::regex(R"(^(.*?\.mixer\.experts)\.\d+\.(up_proj|down_proj)$)"),
      std::regex(R"(^(.*?\.mlp\.experts\.local_experts)\.\d+\.(linear_fc1|linear_fc2)$)"),
      std::regex(R"(^(.*?)\.(gate_proj|up_proj)$)"),
      std::regex(R"(^(.*?)\.(\d+\.(w1|w2|w3))$)"),
      std::regex(R"(^(.*?)\.((w1_linear|w2_linear|w3_linear)\.\d+)$)"),
  };
  std::smatch m;
  for (const auto& r : rules)
    if (std::regex_match(module, m, r)) return m[1];
  return module;
}

// A real config cut down to a few layers with 4 experts, to keep the regex checks quick.
json tiny(const std::string& name) {
  json c = load_config(name);
  if (c.contains("hybrid_override_pattern")) {
    c["hybrid_override_pattern"] = "M*E-";  // one block of each kind
    c.erase("num_hidden_layers");
  } else {
    c["num_hidden_layers"] = 2;
  }
  for (const char* k : {"num_local_experts", "num_experts", "n_routed_experts"})
    if (c.contains(k)) c[k] = 4;
  c["num_experts_per_tok"] = 2;
  return c;
}

TEST(model_spec, quant_groups_follow_numerics_rules) {
  for (const char* name : {"mixtral-8x7b-v0.1.json", "qwen3-30b-a3b.json", "nemotron3-super-120b-a12b.json",
                           "nemotron3-nano-30b-a3b.json"}) {
    SCOPED_TRACE(name);
    const model_spec spec = model_spec_from_config(tiny(name), name);
    for (const auto& l : spec.linears) EXPECT_EQ(l.quant_group, numerics_group_key(l.module)) << l.module;
  }
  // Spelled out for Nemotron: q/k/v share, o alone, all routed experts of a layer share (not across
  // layers or with the shared expert), shared up_proj alone under "...shared_experts".
  const model_spec s = model_spec_from_config(load_config("nemotron3-super-120b-a12b.json"), "super");
  EXPECT_EQ(linear_named(s, "backbone.layers.7.mixer.q_proj").quant_group, "backbone.layers.7.mixer");
  EXPECT_EQ(linear_named(s, "backbone.layers.7.mixer.v_proj").quant_group, "backbone.layers.7.mixer");
  EXPECT_EQ(linear_named(s, "backbone.layers.7.mixer.o_proj").quant_group, "backbone.layers.7.mixer.o_proj");
  EXPECT_EQ(linear_named(s, "backbone.layers.1.mixer.experts.0.up_proj").quant_group, "backbone.layers.1.mixer.experts");
  EXPECT_EQ(linear_named(s, "backbone.layers.1.mixer.experts.511.down_proj").quant_group, "backbone.layers.1.mixer.experts");
  EXPECT_EQ(linear_named(s, "backbone.layers.3.mixer.experts.0.up_proj").quant_group, "backbone.layers.3.mixer.experts");
  EXPECT_EQ(linear_named(s, "backbone.layers.1.mixer.shared_experts.up_proj").quant_group,
            "backbone.layers.1.mixer.shared_experts");
  EXPECT_EQ(linear_named(s, "backbone.layers.0.mixer.in_proj").quant_group, "backbone.layers.0.mixer.in_proj");
  std::set<std::string> groups;
  for (const auto& l : s.linears) groups.insert(l.quant_group);
  // Per MoE layer: router, fc1, fc2, experts, shared up, shared down = 6; per Mamba layer 2; per
  // attention layer 2; lm_head; MTP: eh_proj + attention 2 + MoE 6.
  EXPECT_EQ(groups.size(), size_t(40 * 6 + 40 * 2 + 8 * 2 + 1 + 1 + 2 + 6));
}

TEST(model_spec, routers_lm_head_and_mtp_are_not_quantizable_by_default) {
  const model_spec s = model_spec_from_config(load_config("nemotron3-super-120b-a12b.json"), "super");
  for (const auto& l : s.linears) {
    const bool in_mtp = l.block >= 0 && s.blocks[size_t(l.block)].mtp;
    const bool kept = in_mtp || l.role == linear_role::router || l.role == linear_role::lm_head;
    EXPECT_EQ(l.quantizable, !kept) << l.module;
  }
  EXPECT_TRUE(linear_named(s, "backbone.layers.1.mixer.fc1_latent_proj").quantizable);
  EXPECT_FALSE(linear_named(s, "lm_head").quantizable);
}

// ---- config variants --------------------------------------------------------------------------

json small_llama() {
  return json::parse(R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2})");
}

TEST(model_spec, llama_defaults_untied_head_derived_head_dim_and_bias_flags) {
  json c = small_llama();
  model_spec s = model_spec_from_config(c, "llama");
  EXPECT_EQ(s.dims.head_dim, 8);
  EXPECT_EQ(linear_named(s, "lm_head").shape(), dims({100, 32}));
  EXPECT_EQ(linear_named(s, "model.layers.1.self_attn.v_proj").shape(), dims({16, 32}));
  EXPECT_FALSE(has_tensor(s, "model.layers.0.self_attn.q_proj.bias"));

  c["head_dim"] = 16;
  c["attention_bias"] = true;
  c["mlp_bias"] = true;
  c["tie_word_embeddings"] = true;
  s = model_spec_from_config(c, "llama");
  EXPECT_FALSE(has_linear(s, "lm_head"));
  EXPECT_EQ(linear_named(s, "model.layers.0.self_attn.q_proj").shape(), dims({64, 32}));
  EXPECT_EQ(linear_named(s, "model.layers.0.self_attn.o_proj").shape(), dims({32, 64}));
  EXPECT_EQ(tensor_named(s, "model.layers.0.self_attn.k_proj.bias").shape, dims({32}));
  EXPECT_EQ(tensor_named(s, "model.layers.0.self_attn.o_proj.bias").shape, dims({32}));
  EXPECT_EQ(tensor_named(s, "model.layers.1.mlp.down_proj.bias").shape, dims({32}));
  EXPECT_TRUE(linear_named(s, "model.layers.1.mlp.gate_proj").has_bias);
  // embed 100*32 + 2 layers * (norms 2*32 + q 64*32 + k,v 2*32*32 + o 32*64 + their biases 64+32+32+32
  //                            + gate,up,down 3*48*32 + their biases 48+48+32) + final norm 32
  EXPECT_EQ(parameter_count(s), 3200 + 2 * (64 + 6144 + 160 + 4608 + 128) + 32);
}

TEST(model_spec, qwen3_dense_layers_from_mlp_only_layers_and_sparse_step) {
  json c = load_config("qwen3-30b-a3b.json");
  c["num_hidden_layers"] = 4;
  c["num_experts"] = 4;
  c["decoder_sparse_step"] = 2;  // layers 1 and 3 are MoE ...
  c["mlp_only_layers"] = json::array({3});  // ... but 3 is forced dense
  const model_spec s = model_spec_from_config(c, "qwen3");
  std::string kinds;
  for (const auto& b : s.blocks) kinds += std::string(to_string(b.kind)) + " ";
  EXPECT_EQ(kinds, "attention mlp attention moe attention mlp attention mlp ");
  EXPECT_EQ(linear_named(s, "model.layers.0.mlp.up_proj").shape(), dims({6144, 2048}));
  EXPECT_EQ(linear_named(s, "model.layers.0.mlp.up_proj").role, linear_role::gate_up);
  EXPECT_EQ(linear_named(s, "model.layers.1.mlp.experts.3.up_proj").role, linear_role::expert);
}

TEST(model_spec, nemotron_layers_block_type_list_and_dense_mlp) {
  json c = load_config("nemotron3-nano-30b-a3b.json");
  c.erase("hybrid_override_pattern");
  c.erase("num_hidden_layers");
  c["layers_block_type"] = {"linear_attention", "moe", "full_attention", "mlp", "mamba", "attention"};
  const model_spec s = model_spec_from_config(c, "nano-list");
  EXPECT_EQ(pattern_of(s, false), "ME*-M*");
  EXPECT_EQ(linear_named(s, "backbone.layers.3.mixer.up_proj").shape(), dims({1856, 2688}));
  EXPECT_EQ(linear_named(s, "backbone.layers.3.mixer.up_proj").role, linear_role::up);
  EXPECT_EQ(linear_named(s, "backbone.layers.3.mixer.down_proj").role, linear_role::down);
}

TEST(model_spec, nemotron_bias_flags_and_embedding_alias) {
  json c = load_config("nemotron3-nano-30b-a3b.json");
  c["use_conv_bias"] = false;
  c["mamba_proj_bias"] = true;
  const model_spec s = model_spec_from_config(c, "nano");
  EXPECT_FALSE(has_tensor(s, "backbone.layers.0.mixer.conv1d.bias"));
  EXPECT_EQ(tensor_named(s, "backbone.layers.0.mixer.in_proj.bias").shape, dims({10304}));
  EXPECT_EQ(tensor_named(s, "backbone.layers.0.mixer.out_proj.bias").shape, dims({2688}));

  // NVIDIA's legacy spelling "backbone.embedding.weight" is accepted in place of "embeddings".
  tensor_list tensors = expected_tensors(s);
  for (auto& [name, shape] : tensors)
    if (name == "backbone.embeddings.weight") name = "backbone.embedding.weight";
  EXPECT_EQ(check_against_tensors(s, tensors), std::vector<std::string>{});
}

// ---- errors -----------------------------------------------------------------------------------

TEST(model_spec, unknown_architecture_lists_supported) {
  const std::string msg = error_of_file(config_path("bad-unknown-architecture.json"));
  for (const char* needle : {"bad-unknown-architecture.json: unsupported architecture GPT2LMHeadModel / gpt2",
                             "LlamaForCausalLM (llama)", "MixtralForCausalLM (mixtral)", "Qwen3MoeForCausalLM (qwen3_moe)",
                             "NemotronHForCausalLM (nemotron_h)"})
    EXPECT_NE(msg.find(needle), std::string::npos) << needle << " not in: " << msg;
  EXPECT_NE(error_of(json::parse(R"({"hidden_size": 8})")).find("'architectures' (or 'model_type') is missing"),
            std::string::npos);
}

TEST(model_spec, missing_key_names_key_and_file) {
  const fs::path file = config_path("bad-missing-key.json");
  EXPECT_EQ(error_of_file(file), file.string() + ": config key 'hidden_size' is missing");
  // A directory without config.json.
  EXPECT_NE(error_of_file(source_dir() / "tests" / "data").find("data/config.json: cannot open"), std::string::npos);
}

TEST(model_spec, bad_values_name_the_key) {
  const auto expect_error = [](const json& c, const std::string& needle) {
    const std::string msg = error_of(c);
    EXPECT_NE(msg.find(needle), std::string::npos) << "wanted '" << needle << "' in: " << msg;
    EXPECT_EQ(msg.rfind("test-config.json: ", 0), 0u) << msg;
  };
  json c = small_llama();
  c["hidden_size"] = "32";
  expect_error(c, "config key 'hidden_size' must be a positive integer, got \"32\"");
  c = small_llama();
  c["vocab_size"] = int64_t(1) << 40;
  expect_error(c, "config key 'vocab_size' is 1099511627776, above the limit 16777216");
  c = small_llama();
  c["num_key_value_heads"] = 3;
  expect_error(c, "'num_attention_heads' (4) is not a multiple of 'num_key_value_heads' (3)");
  c = small_llama();
  c["tie_word_embeddings"] = 1;
  expect_error(c, "config key 'tie_word_embeddings' must be true or false");
  c = small_llama();
  c["hidden_size"] = 30;
  expect_error(c, "'head_dim' is absent and 'hidden_size' (30) is not a multiple of 'num_attention_heads' (4)");

  const json nano = load_config("nemotron3-nano-30b-a3b.json");
  c = nano;
  c["hybrid_override_pattern"] = "MEMX";
  expect_error(c, "config key 'hybrid_override_pattern': character 'X' at position 3");
  c = nano;
  c["num_hidden_layers"] = 51;
  expect_error(c, "config key 'num_hidden_layers' (51) disagrees with the 52 layers of 'hybrid_override_pattern'");
  c = nano;
  c.erase("n_groups");
  expect_error(c, "config key 'n_groups' (or 'mamba_n_groups') is missing");
  c = nano;
  c.erase("n_groups");
  c["mamba_n_groups"] = 3;
  expect_error(c, "'mamba_num_heads' (64) is not a multiple of 'mamba_n_groups' (3)");
  c = nano;
  c["n_shared_experts"] = 2;
  expect_error(c, "config key 'n_shared_experts' is 2: only 0 or 1 shared expert is supported");
  c = nano;
  c["num_nextn_predict_layers"] = 1;
  expect_error(c, "config key 'mtp_hybrid_override_pattern' (or 'mtp_layers_block_type') is missing");
  c = load_config("nemotron3-super-120b-a12b.json");
  c["num_nextn_predict_layers"] = 2;
  expect_error(c, "config key 'num_nextn_predict_layers' is 2: only 1 MTP step is supported");
}

TEST(model_spec, unreadable_files_are_io_errors) {
  const fs::path dir = fs::temp_directory_path() / "mixq_test_model_spec";
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << "{ \"architectures\": [";
  EXPECT_EQ(error_of_file(dir).rfind((dir / "config.json").string() + ": not valid JSON", 0), 0u) << error_of_file(dir);
  std::ofstream(dir / "config.json") << "[1, 2]";
  EXPECT_EQ(error_of_file(dir), (dir / "config.json").string() + ": config is not a JSON object");
  fs::remove_all(dir);
  EXPECT_NE(error_of_file(dir / "config.json").find("cannot open"), std::string::npos);
}

TEST(model_spec, check_names_missing_extra_and_wrong_shaped_tensors) {
  json c = load_config("nemotron3-nano-30b-a3b.json");
  c["hybrid_override_pattern"] = "M*E";
  c.erase("num_hidden_layers");
  const model_spec s = model_spec_from_config(c, "nano-3");
  tensor_list tensors = expected_tensors(s);
  ASSERT_EQ(check_against_tensors(s, tensors), std::vector<std::string>{});

  tensors.erase(std::find_if(tensors.begin(), tensors.end(),
                             [](const auto& t) { return t.first == "backbone.layers.2.mixer.experts.5.down_proj.weight"; }));
  for (auto& [name, shape] : tensors)
    if (name == "backbone.layers.0.mixer.in_proj.weight") shape = {10240, 2688};  // forgot dt's 64 rows
  tensors.emplace_back("backbone.layers.1.mixer.q_norm.weight", dims{128});
  const std::vector<std::string> problems = check_against_tensors(s, tensors);
  EXPECT_EQ(problems.size(), 3u);
  expect_mentions(problems,
                  {"missing tensor 'backbone.layers.2.mixer.experts.5.down_proj.weight' (expected shape [2688, 1856])",
                   "tensor 'backbone.layers.0.mixer.in_proj.weight' has shape [10240, 2688], expected [10304, 2688]",
                   "unexpected tensor 'backbone.layers.1.mixer.q_norm.weight' [128]"});
}

}  // namespace
}  // namespace mixq
