// The FP32 Nemotron-H forward pass: the synthetic tiny checkpoint (mixq synth --arch nemotron_h
// --preset tiny --seed 0) against the logits transformers computes on it (torch fallback for Mamba;
// tests/interop/check_hf_loading.py wrote the golden), and the perplexity of the real
// shared/models/nemotron-h-tiny against its reference.json.
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

#include "calib/token_file.hpp"
#include "pipeline/eval/perplexity.hpp"
#include "pipeline/model/nemotron_h.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"
#include "model_test_support.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

using testing::read_json;
using testing::synth_dir;

// Every block kind (M, E, *, -) with latent MoE and a shared expert: max |a - b| / (1 + |ref|) < 1e-4.
TEST(nemotron_h, synth_checkpoint_logits_match_transformers) {
  const json g = testing::read_golden("synth_nemotron_h_tiny_logits.json");
  const synth_dir d(synth_arch::nemotron_h);
  // transformers' torch path clamps dt below at time_step_min (0.001 here), where mixq follows
  // time_step_limit (default: no clamp; architecture.md §1.5): state the golden's clamp explicitly.
  const json min_dt = read_json(d.dir / "config.json").at("time_step_min");
  d.patch_config({{"time_step_limit", {min_dt, nullptr}}});
  const nemotron_h_model model = nemotron_h_model::load(d.dir);
  const auto tokens = g["tokens"].get<std::vector<int32_t>>();
  const std::vector<float> logits = model.forward(tokens);
  ASSERT_EQ(logits.size(), tokens.size() * g["logits"][0].size());
  const double worst = testing::worst_logit_difference(logits, g["logits"]);
  EXPECT_LT(worst, 1e-4) << "largest relative difference from transformers";
  std::ostringstream os;
  os << std::scientific << std::setprecision(2) << worst;
  ::testing::Test::RecordProperty("max_rel_diff", os.str());
}

// Every linear, lm_head included, goes through the hook under its module name; a read-only hook
// changes nothing, and the routed experts see T * k rows per MoE block.
TEST(nemotron_h, hook_sees_every_linear) {
  const synth_dir d(synth_arch::nemotron_h);
  const nemotron_h_model model = nemotron_h_model::load(d.dir);
  const std::vector<int32_t> tokens = {1, 5, 7, 9, 11, 300, 42, 17, 3, 99};
  std::map<std::string, int64_t> rows;
  const std::vector<float> plain = model.forward(tokens);
  const std::vector<float> hooked =
      model.forward(tokens, [&](const std::string& name, float*, int64_t T, int64_t) { rows[name] += T; });
  EXPECT_EQ(plain, hooked);
  int64_t expert_rows = 0, moe_blocks = 0;
  for (const block_spec& b : model.spec().blocks) moe_blocks += !b.mtp && b.kind == block_kind::moe;
  for (const linear_spec& l : model.spec().linears) {
    if (l.block >= 0 && model.spec().blocks[size_t(l.block)].mtp) continue;
    if (l.expert >= 0) {
      if (l.module.ends_with(".up_proj")) expert_rows += rows.count(l.module) ? rows[l.module] : 0;
      continue;
    }
    EXPECT_EQ(rows[l.module], int64_t(tokens.size())) << l.module;
  }
  EXPECT_EQ(expert_rows, moe_blocks * int64_t(tokens.size()) * model.config().experts_per_token);
}

// The full TinyStories validation stream at ctx 256 (about 2 s): reference.json
// valid_ppl_bf16_weights.ctx256 = 5.4904798.
TEST(nemotron_h, tiny_perplexity_ctx256_matches_reference) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "nemotron-h-tiny");
  const json ref = read_json(dir / "reference.json");
  nemotron_h_model model = nemotron_h_model::load(dir);
  const std::vector<int32_t> tokens = read_token_file(
      testing::shared_data("tinystories/TinyStories-valid-reduced.tok512.u16.bin"), model.config().vocab);
  const perplexity_result r = evaluate_perplexity(model, tokens, 256);
  EXPECT_NEAR(r.ppl, ref.at("valid_ppl_bf16_weights").at("ctx256").get<double>(), 1e-3);
  ::testing::Test::RecordProperty("ppl", std::to_string(r.ppl));
}

}  // namespace
}  // namespace mixq
