// The FP32 forward pass of the MoE decoders (Mixtral, Qwen3-MoE) on synthetic checkpoints (mixq
// synth --preset tiny --seed 0) against the logits transformers computes on the same checkpoints
// (tests/interop/check_hf_loading.py wrote the golden files), plus the routing seen through the
// linear_output_hook and the errors for unsupported options.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "pipeline/io/safetensors_file.hpp"  // io_error
#include "pipeline/model/llama.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"
#include "model_test_support.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

using testing::read_golden;
using testing::synth_dir;
using testing::worst_logit_difference;

json golden(const std::string& arch) { return read_golden("synth_" + arch + "_tiny_logits.json"); }

void check_logits(synth_arch arch) {
  const std::string name(to_string(arch));
  const json g = golden(name);
  const synth_dir d(arch);
  const llama_model model = llama_model::load(d.dir);
  const auto tokens = g["tokens"].get<std::vector<int32_t>>();
  const std::vector<float> logits = model.forward(tokens);
  ASSERT_EQ(logits.size(), tokens.size() * g["logits"][0].size());
  const double worst = worst_logit_difference(logits, g["logits"]);
  EXPECT_LT(worst, 1e-5) << name << ": largest relative difference from transformers";
  std::ostringstream os;
  os << std::scientific << std::setprecision(2) << worst;
  ::testing::Test::RecordProperty("max_rel_diff", os.str());
}

TEST(moe, mixtral_synth_logits_match_transformers) { check_logits(synth_arch::mixtral); }

// Layer 0 of the tiny Qwen3-MoE is dense (mlp_only_layers), so this covers both feed-forward kinds
// and the q/k norms.
TEST(moe, qwen3_moe_synth_logits_match_transformers) { check_logits(synth_arch::qwen3_moe); }

// Qwen3 renormalises the top-k weights only under norm_topk_prob (the golden's config has it true).
TEST(moe, qwen3_moe_reads_norm_topk_prob) {
  const json g = golden("qwen3_moe");
  const synth_dir d(synth_arch::qwen3_moe);
  d.patch_config({{"norm_topk_prob", false}});
  const llama_model model = llama_model::load(d.dir);
  EXPECT_FALSE(model.config().norm_topk_prob);
  EXPECT_GT(worst_logit_difference(model.forward(g["tokens"].get<std::vector<int32_t>>()), g["logits"]), 1e-3);
}

// The hook sees the router [T, E] and each expert that received tokens on exactly those, [T_e, out];
// per MoE layer the routed (token, expert) pairs number T * k.
void check_routing_through_hook(synth_arch arch) {
  const synth_dir d(arch);
  const llama_model model = llama_model::load(d.dir);
  const llama_config& c = model.config();
  ASSERT_GT(c.experts, 0);
  const std::vector<int32_t> tokens = {1, 5, 7, 9, 11, 300, 42, 17, 3, 99, 250, 8};
  const int64_t T = int64_t(tokens.size());

  struct seen {
    int64_t calls = 0, rows = 0, out = 0;
  };
  std::map<std::string, seen> by_name;
  const std::vector<float> plain = model.forward(tokens);
  const std::vector<float> hooked = model.forward(tokens, [&](const std::string& name, float*, int64_t rows, int64_t out) {
    seen& s = by_name[name];
    ++s.calls;
    s.rows = rows;
    s.out = out;
  });
  EXPECT_EQ(plain, hooked);  // a read-only hook changes nothing

  int moe_blocks = 0;
  for (const block_spec& b : model.spec().blocks) {
    if (b.kind != block_kind::moe) continue;
    ++moe_blocks;
    std::map<std::string, int64_t> rows_by_leaf;  // gate / up / down projection -> total routed rows
    for (const linear_spec& l : model.spec().linears) {
      if (l.block != b.index) continue;
      const auto it = by_name.find(l.module);
      if (l.role == linear_role::router) {
        ASSERT_NE(it, by_name.end()) << l.module;
        EXPECT_FALSE(l.quantizable) << l.module;
        EXPECT_EQ(it->second.calls, 1) << l.module;
        EXPECT_EQ(it->second.rows, T) << l.module;
        EXPECT_EQ(it->second.out, c.experts) << l.module;
        continue;
      }
      ASSERT_GE(l.expert, 0) << l.module;
      if (it == by_name.end()) continue;  // no token chose this expert
      EXPECT_EQ(it->second.calls, 1) << l.module;
      EXPECT_GE(it->second.rows, 1) << l.module;
      EXPECT_LE(it->second.rows, T) << l.module;
      EXPECT_EQ(it->second.out, l.out_features) << l.module;
      rows_by_leaf[l.module.substr(l.module.rfind('.') + 1)] += it->second.rows;
    }
    ASSERT_EQ(rows_by_leaf.size(), 3u) << b.prefix;
    for (const auto& [leaf, rows] : rows_by_leaf)
      EXPECT_EQ(rows, T * c.experts_per_token) << b.prefix << " " << leaf;
  }
  EXPECT_GT(moe_blocks, 0);
  // every linear the hook saw is one the spec lists (experts and routers included)
  for (const auto& [name, s] : by_name) {
    const bool listed = name == "lm_head" || std::any_of(model.spec().linears.begin(), model.spec().linears.end(),
                                                         [&](const linear_spec& l) { return l.module == name; });
    EXPECT_TRUE(listed) << name;
  }
}

TEST(moe, mixtral_hook_sees_each_routed_expert) { check_routing_through_hook(synth_arch::mixtral); }
TEST(moe, qwen3_moe_hook_sees_each_routed_expert) { check_routing_through_hook(synth_arch::qwen3_moe); }

// A perturbation at one expert's output reaches the logits (the hook's output is what flows on).
TEST(moe, hook_modification_at_an_expert_changes_logits) {
  const synth_dir d(synth_arch::mixtral);
  const llama_model model = llama_model::load(d.dir);
  const std::vector<int32_t> tokens = {1, 5, 7, 9, 11, 300, 42, 17};
  const std::vector<float> plain = model.forward(tokens);
  std::string target;
  const std::vector<float> bumped = model.forward(tokens, [&](const std::string& name, float* y, int64_t T, int64_t out) {
    if (name.find(".experts.") == std::string::npos || !name.ends_with(".w2")) return;
    if (target.empty()) target = name;
    if (name == target)
      for (int64_t i = 0; i < T * out; ++i) y[i] += 0.5f;
  });
  ASSERT_FALSE(target.empty());
  EXPECT_NE(plain, bumped) << target;
}

std::string load_error(const fs::path& dir) {
  try {
    llama_model::load(dir);
  } catch (const io_error& e) {
    return e.what();
  }
  return "";
}

TEST(moe, rejects_more_experts_per_token_than_experts) {
  const synth_dir mixtral(synth_arch::mixtral);
  mixtral.patch_config({{"num_experts_per_tok", 5}});  // tiny Mixtral has 4 experts
  std::string e = load_error(mixtral.dir);
  EXPECT_NE(e.find("config.json: unsupported option: config key 'num_experts_per_tok' is 5, more than the 4 experts"), std::string::npos) << e;

  const synth_dir qwen(synth_arch::qwen3_moe);
  qwen.patch_config({{"num_experts_per_tok", 9}});  // tiny Qwen3-MoE has 8 experts
  e = load_error(qwen.dir);
  EXPECT_NE(e.find("config.json: unsupported option: config key 'num_experts_per_tok' is 9, more than the 8 experts"), std::string::npos) << e;
}

TEST(moe, rejects_sliding_window) {
  const synth_dir mixtral(synth_arch::mixtral);
  mixtral.patch_config({{"sliding_window", 4}});
  std::string e = load_error(mixtral.dir);
  EXPECT_NE(e.find("config.json: unsupported option: config key 'sliding_window' is 4"), std::string::npos) << e;

  const synth_dir qwen(synth_arch::qwen3_moe);
  qwen.patch_config({{"sliding_window", 4}});  // ignored while use_sliding_window is false, as in HF
  EXPECT_EQ(load_error(qwen.dir), "");
  qwen.patch_config({{"use_sliding_window", true}});
  e = load_error(qwen.dir);
  EXPECT_NE(e.find("config.json: unsupported option: config key 'sliding_window' is 4"), std::string::npos) << e;
}

}  // namespace
}  // namespace mixq
