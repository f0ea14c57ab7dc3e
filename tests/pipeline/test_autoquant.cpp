// The mixed-precision search: groups and costs from real specs, scores checked against the model's
// own execution (not the replay arithmetic), monotonicity, and the search end to end.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include <cmath>

#include "kernels/cpu/quantize.hpp"
#include "formats/activation_quant.hpp"
#include "pipeline/autoquant/search_run.hpp"
#include "pipeline/quantize/quantize_run.hpp"
#include "pipeline/quantize/quantize_weights.hpp"
#include "calib/search_scores.hpp"
#include "pipeline/report/search_record.hpp"
#include "tests/pipeline/model_test_support.hpp"

namespace mixq {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

search_settings settings(score_method m) {
  search_settings st;
  st.enabled = true;
  st.effective_bits = 6.0;
  st.candidates = {weight_quant_spec{format_id::nvfp4}, weight_quant_spec{format_id::fp8_per_tensor}};
  st.method = m;
  return st;
}

const search_group& group_named(const search_space& s, const std::string& name) {
  for (const auto& g : s.groups)
    if (g.name == name) return g;
  throw std::runtime_error("no group " + name);
}

TEST(autoquant, stories260k_groups_candidates_and_costs) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const model_spec spec = model_spec_from_file(model);
  const search_settings st = settings(score_method::fisher);
  const search_space s = make_search_space(spec, st);
  EXPECT_EQ(s.groups.size(), 5u * 4u);  // per layer: q/k/v, o, gate/up, down (lm_head is tied)
  const search_group& qkv = group_named(s, "model.layers.0.self_attn");
  EXPECT_EQ(qkv.linears.size(), 3u);
  EXPECT_EQ(qkv.kind, "attention");
  EXPECT_EQ(qkv.candidates.size(), 3u);
  const search_group& down = group_named(s, "model.layers.2.mlp.down_proj");
  ASSERT_EQ(down.candidates.size(), 2u);  // bf16, fp8: K = 172 cannot hold NVFP4
  EXPECT_THAT(down.unavailable.at("nvfp4"), HasSubstr("172"));
  EXPECT_EQ(s.total_weights, 226560);
  // cost units are quarter-bits x weights
  const int64_t qkv_weights = spec.dims.hidden * (spec.dims.heads + 2 * spec.dims.kv_heads) * spec.dims.head_dim;
  EXPECT_EQ(qkv.weights, qkv_weights);
  EXPECT_EQ(group_cost(s, spec, st, qkv, qkv.candidates[1]), qkv_weights * 18);  // NVFP4: 4.5 bits = 18 quarters
  EXPECT_EQ(group_cost(s, spec, st, qkv, qkv.candidates[2]), qkv_weights * 32);  // FP8
  EXPECT_EQ(cost_per_bit(s, spec, st), 226560 * 4);

  // mse+four_over_six picks its normalizer per tensor: not for fused siblings (one weight_scale_2)
  search_settings per_tensor = st;
  per_tensor.candidates[0].nvfp4 = nvfp4_selector::mse_four_over_six;
  const search_space p = make_search_space(spec, per_tensor);
  EXPECT_THAT(group_named(p, "model.layers.0.self_attn").unavailable.at("nvfp4"), HasSubstr("weight_scale_2"));
  EXPECT_EQ(group_named(p, "model.layers.0.self_attn.o_proj").candidates.size(), 3u);
}

TEST(autoquant, routers_and_globs_are_disabled_and_active_moe_weighs_experts) {
  const testing::synth_dir synth(synth_arch::mixtral);
  const model_spec spec = model_spec_from_file(synth.dir);
  search_settings st = settings(score_method::fisher);
  st.disable = {{"*self_attn*", 3}, {"nothing.like.this", 4}};
  st.cost = cost_model::active_moe;
  const search_space s = make_search_space(spec, st);
  int routers = 0, experts = 0;
  for (const auto& g : s.groups) {
    if (g.name.ends_with("block_sparse_moe.gate")) {
      EXPECT_TRUE(g.disabled);
      ++routers;
    }
    if (g.kind == "attention") { EXPECT_THAT(g.disabled_reason, HasSubstr("*self_attn*")); }
    if (g.name.ends_with(".experts")) {
      ++experts;
      const int64_t per_weight = group_cost(s, spec, st, g, g.candidates[1]) / g.weights;
      EXPECT_EQ(per_weight, 18 * spec.dims.experts_per_token);  // quarter-bits x top_k
    }
  }
  EXPECT_GT(routers, 0);
  EXPECT_GT(experts, 0);
  ASSERT_EQ(s.warnings.size(), 1u);
  EXPECT_THAT(s.warnings[0], HasSubstr("nothing.like.this"));
}

// The MTP head is outside the forward pass the scores come from: every one would be 0, and the
// solver would quantize it for free. Its groups are kept BF16, saying why, without a recipe glob.
TEST(autoquant, the_mtp_head_is_kept_out_of_the_search) {
  const testing::synth_dir synth(synth_arch::nemotron_h);
  const model_spec spec = model_spec_from_file(synth.dir);
  const search_space s = make_search_space(spec, settings(score_method::fisher));
  int mtp = 0, searched = 0;
  for (const auto& g : s.groups) {
    const bool in_mtp = g.name.starts_with("mtp.");
    if (in_mtp) {
      ++mtp;
      EXPECT_TRUE(g.disabled) << g.name;
      EXPECT_THAT(g.disabled_reason, HasSubstr(g.name.ends_with(".gate") ? "router" : "MTP head")) << g.name;
      EXPECT_EQ(g.candidates.size(), 1u) << g.name;  // BF16 alone
    } else {
      searched += !g.disabled;
    }
  }
  EXPECT_GT(mtp, 0);
  EXPECT_GT(searched, 0);
}

// Fixed rules meet the same gap: no calibration token reaches the MTP head, so a format that
// quantizes activations would take a made-up input scale there. Such linears stay BF16, saying why;
// weight-only NVFP4 needs no input scale and applies.
TEST(autoquant, fixed_rules_keep_the_mtp_head_out_of_activation_formats) {
  const testing::synth_dir synth(synth_arch::nemotron_h);
  const model_spec spec = model_spec_from_file(synth.dir);
  const auto mtp_formats = [&](const recipe& r) {
    const quant_plan plan = plan_quantization(r, spec);
    std::set<std::string> formats;
    int kept = 0;
    for (size_t i = 0; i < spec.linears.size(); ++i) {
      const linear_spec& l = spec.linears[i];
      if (l.block < 0 || !spec.blocks[size_t(l.block)].mtp || l.role == linear_role::router) continue;
      formats.insert(std::string(traits_of(plan.linears[i].weight.format).name));
      kept += plan.linears[i].note.find("MTP head") != std::string::npos;
    }
    EXPECT_EQ(kept > 0, formats == std::set<std::string>{"bf16"});
    return formats;
  };
  EXPECT_EQ(mtp_formats(load_recipe("moe_nvfp4")), std::set<std::string>{"bf16"});
  EXPECT_TRUE(mtp_formats(parse_recipe("quantize:\n  default: nvfp4_w4a16\n", "w.yaml")).count("nvfp4_w4a16"));
}

TEST(autoquant, scores_are_monotone_in_bits) {
  search_group g;
  g.candidates = {weight_quant_spec{format_id::bf16}, weight_quant_spec{format_id::nvfp4},
                  weight_quant_spec{format_id::fp8_per_tensor}};
  std::vector<double> s{5.0, 1.0, 3.0};  // fp8 (8 bits) measured worse than nvfp4 (4.5): noise
  make_monotone_in_bits(g, s);
  EXPECT_EQ(s, (std::vector<double>{0.0, 1.0, 1.0}));
}

// The fisher score of one single-linear group equals sum (g * (Y_q - Y))^2 with Y_q taken from the
// model itself running the quantized layer (weights and input rounding), not from the replay.
void expect_fisher_matches_own_execution(const fs::path& dir, const std::string& target) {
  const std::unique_ptr<causal_lm> model = load_causal_lm(dir);
  const search_settings st = settings(score_method::fisher);
  const search_space space = make_search_space(model->spec(), st);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 64; ++i) tokens.push_back(int32_t((i * 37 + 11) % 500 + 3));
  const std::vector<std::vector<int32_t>> seqs{tokens};
  const calibration_stats stats = calibrate(*model, seqs);
  const sensitivity_scores scores = score_groups(*model, space, stats, seqs, score_method::fisher);
  size_t gi = 0;
  while (space.groups[gi].name != target) ++gi;
  const auto capture = [&](std::vector<float>& into) {
    return forward_hooks([&into, target](const std::string& name, float* y, int64_t T, int64_t out) {
      if (name == target) into.assign(y, y + T * out);
    });
  };
  for (size_t c = 1; c < space.groups[gi].candidates.size(); ++c) {
    const weight_quant_spec cand = space.groups[gi].candidates[c];
    std::vector<float> y_ref, y_q;
    const llama_grads grads = model->forward_backward(tokens, capture(y_ref));
    // quantize the layer the way the export does, run the model, restore
    std::vector<float> saved;
    input_quant saved_act;
    model->for_each_linear([&](llama_linear& W) {
      if (W.name != target) return;
      saved = W.w;
      saved_act = W.act;
      const cpu::source_matrix src{W.w.data(), cpu::source_dtype::f32, W.out, W.in, target};
      const float x_amax = stats.input_amax.at(target);
      if (cand.format == format_id::nvfp4) {
        cpu::nvfp4_dequantize(cpu::nvfp4_quantize(src, nvfp4_options_for(cand)), W.w);
        W.act = {format_id::nvfp4, nvfp4_input_scale(x_amax)};
      } else {
        cpu::fp8_dequantize(cpu::fp8_quantize(src, fp8_options_for(cand)), W.w);
        W.act = {format_id::fp8_per_tensor, fp8_input_scale(x_amax)};
      }
    });
    model->forward(tokens, capture(y_q));
    model->for_each_linear([&](llama_linear& W) {
      if (W.name == target) W.w = saved, W.act = saved_act;
    });
    const std::vector<float>& g = grads.dy.at(target);
    double want = 0.0;
    for (size_t i = 0; i < g.size(); ++i) {
      const double v = double(g[i]) * (double(y_q[i]) - double(y_ref[i]));
      want += v * v;
    }
    ASSERT_GT(want, 0.0);
    EXPECT_NEAR(scores.score[gi][c], want, 1e-4 * want) << target << " " << traits_of(cand.format).name;
  }
}

TEST(autoquant, fisher_score_matches_the_models_own_quantized_output) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "stories260K");
  expect_fisher_matches_own_execution(dir, "model.layers.1.self_attn.o_proj");
}

TEST(autoquant, nemotron_h_fisher_score_matches_the_models_own_quantized_output) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "nemotron-h-tiny");
  expect_fisher_matches_own_execution(dir, "backbone.layers.2.mixer.out_proj");  // a Mamba block
  expect_fisher_matches_own_execution(dir, "backbone.layers.3.mixer.o_proj");    // attention
}

TEST(autoquant, search_end_to_end_meets_the_budget_and_reuses_scores) {
  MIXQ_REQUIRE_SHARED_MODEL(model, "stories260K");
  const fs::path tmp = fs::temp_directory_path() / ("mixq-autoquant-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  quantize_request rq;
  rq.model = model;
  rq.out = tmp / "out";
  rq.rcp = load_recipe("auto_nvfp4_fp8_6p0bits");
  rq.rcp.calibration.samples = 4;
  rq.rcp.calibration.seq_len = 128;
  rq.rcp.search.score_samples = 2;
  rq.measure_front = true;
  const quantize_report r = run_quantize(rq);
  ASSERT_EQ(r.measured_front.size(), 3u);  // 5.4, 6.0 and 8.0 bits are feasible on stories260K
  EXPECT_GT(r.measured_front[0].second, r.measured_front[2].second);  // more bits, lower perplexity
  EXPECT_NEAR(r.measured_front[1].second, r.ppl_fake_quant, 1e-9 * r.ppl_fake_quant);  // 6.0 is the asked budget
  ASSERT_TRUE(r.searched);
  EXPECT_TRUE(r.search.proven_optimal);
  EXPECT_LE(r.search.achieved_bits, 6.0);
  EXPECT_GT(r.search.achieved_bits, 5.5);  // a good search spends the budget
  EXPECT_NEAR(r.effective_bits, r.search.achieved_bits, 1e-9);
  EXPECT_NEAR(r.ppl_export, r.ppl_fake_quant, 1e-4 * r.ppl_fake_quant);
  const search_record rec = read_search_record(r.run_dir / "search.json");  // what `mixq report` reads
  EXPECT_EQ(rec.groups.size(), r.search.space.groups.size());
  EXPECT_EQ(rec.method, "fisher");
  EXPECT_EQ(rec.measured.size(), 3u);
  for (size_t k = 1; k < rec.front.size(); ++k)  // one point per optimum, however many budgets share it
    EXPECT_FALSE(rec.front[k].bits == rec.front[k - 1].bits && rec.front[k].score == rec.front[k - 1].score) << k;
  EXPECT_EQ(rec.model, fs::path(model).string());
  ASSERT_TRUE(rec.reference_ppl.has_value());
  EXPECT_EQ(*rec.reference_ppl, r.ppl_source);
  const search_scores_table h5 = read_search_scores(r.run_dir / "search.h5");
  EXPECT_EQ(h5.chosen.size(), r.search.space.groups.size());
  for (size_t g = 0; g < r.search.space.groups.size(); ++g) {
    const search_group& G = r.search.space.groups[g];
    EXPECT_EQ(h5.chosen.at(G.name), traits_of(G.candidates[size_t(r.search.choice[g])].format).name);
    EXPECT_EQ(h5.scores.at("bf16").at(G.name), 0.0);
  }
  // at 5.4 bits (the front) the stored scores re-solve without a model run
  const front_entry e = solve_budget(model_spec_from_file(model), rq.rcp.search, r.search.space, r.search.scores, 5.4);
  EXPECT_TRUE(e.feasible);
  EXPECT_LE(e.achieved_bits, 5.4);
  // resume: the scores come back from search.json, the same choice follows
  rq.resume = true;
  rq.overwrite = true;
  rq.measure_front = false;  // (the front measured before stays in the record: the same scores)
  const quantize_report again = run_quantize(rq);
  EXPECT_TRUE(again.search.scores_reused);
  EXPECT_EQ(again.search.choice, r.search.choice);
  EXPECT_EQ(read_search_record(r.run_dir / "search.json").measured.size(), 3u);
  EXPECT_EQ(read_search_record(r.run_dir / "search.json").cost, "weight");
  // another cost model steers the solver only: the stored scores still apply, and the record says
  // what its bits count
  rq.rcp.search.cost = cost_model::active_moe;
  const quantize_report active = run_quantize(rq);
  EXPECT_TRUE(active.search.scores_reused);
  EXPECT_EQ(read_search_record(r.run_dir / "search.json").cost, "active_moe");
  EXPECT_TRUE(read_search_record(r.run_dir / "search.json").measured.empty());  // (bits counted otherwise)
  rq.rcp.search.cost = cost_model::weight;
  // below the reachable minimum: refused with the minimum named
  rq.rcp.search.effective_bits = 4.5;
  rq.resume = false;
  try {
    run_quantize(rq);
    ADD_FAILURE() << "an unreachable budget was accepted";
  } catch (const std::exception& ex) {
    EXPECT_THAT(ex.what(), HasSubstr("below what this model can reach"));
  }
  fs::remove_all(tmp);
}

}  // namespace
}  // namespace mixq

namespace mixq {
namespace {

// A routed-expert group is scored at its MoE block's output: sum (g * dB)^2 with dB the change of
// fc2_latent_proj's output when the model itself runs every expert of the layer quantized.
TEST(autoquant, nemotron_h_expert_group_scored_at_the_moe_block_output) {
  MIXQ_REQUIRE_SHARED_MODEL(dir, "nemotron-h-tiny");
  const std::unique_ptr<causal_lm> model = load_causal_lm(dir);
  const model_spec& spec = model->spec();
  const search_settings st = settings(score_method::fisher);
  const search_space space = make_search_space(spec, st);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 64; ++i) tokens.push_back(int32_t((i * 37 + 11) % 500 + 3));
  const std::vector<std::vector<int32_t>> seqs{tokens};
  const calibration_stats stats = calibrate(*model, seqs);
  const sensitivity_scores scores = score_groups(*model, space, stats, seqs, score_method::fisher);
  const std::string block = "backbone.layers.1.mixer", fc2 = block + ".fc2_latent_proj";
  size_t gi = 0;
  while (!(space.groups[gi].name.starts_with(block + ".experts"))) ++gi;
  const std::map<std::string, float> x_amax = input_amax_by_linear(spec, stats);
  const auto capture = [&](std::vector<float>& into) {
    return forward_hooks([&into, fc2](const std::string& name, float* y, int64_t T, int64_t out) {
      if (name == fc2) into.assign(y, y + T * out);
    });
  };
  for (size_t c = 1; c < space.groups[gi].candidates.size(); ++c) {
    const weight_quant_spec cand = space.groups[gi].candidates[c];
    std::vector<float> y_ref, y_q;
    const llama_grads grads = model->forward_backward(tokens, capture(y_ref));
    const std::unique_ptr<causal_lm> quantized = load_causal_lm(dir);
    quantized->for_each_linear([&](llama_linear& W) {
      if (!W.name.starts_with(block + ".experts.")) return;
      const cpu::source_matrix src{W.w.data(), cpu::source_dtype::f32, W.out, W.in, W.name};
      if (cand.format == format_id::nvfp4) {
        cpu::nvfp4_dequantize(cpu::nvfp4_quantize(src, nvfp4_options_for(cand)), W.w);
        W.act = {format_id::nvfp4, nvfp4_input_scale(x_amax.at(W.name))};
      } else {
        cpu::fp8_dequantize(cpu::fp8_quantize(src, fp8_options_for(cand)), W.w);
        W.act = {format_id::fp8_per_tensor, fp8_input_scale(x_amax.at(W.name))};
      }
    });
    quantized->forward(tokens, capture(y_q));
    const std::vector<float>& g = grads.dy.at(fc2);
    double want = 0.0;
    for (size_t i = 0; i < g.size(); ++i) {
      const double v = double(g[i]) * (double(y_q[i]) - double(y_ref[i]));
      want += v * v;
    }
    ASSERT_GT(want, 0.0);
    EXPECT_NEAR(scores.score[gi][c], want, 1e-3 * want) << traits_of(cand.format).name;
  }
}

}  // namespace
}  // namespace mixq

namespace mixq {
namespace {

// The same for a SwiGLU MoE without a latent projection (Mixtral): dB[t] = sum over t's experts of
// w * (y_q - y), with y_q from the model running every expert quantized and dL/dB = dL/dy_e / w.
TEST(autoquant, mixtral_expert_group_scored_at_the_moe_block_output) {
  const testing::synth_dir synth(synth_arch::mixtral);
  const std::unique_ptr<causal_lm> model = load_causal_lm(synth.dir);
  const model_spec& spec = model->spec();
  const search_settings st = settings(score_method::fisher);
  const search_space space = make_search_space(spec, st);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 48; ++i) tokens.push_back(int32_t((i * 37 + 11) % 500 + 3));
  const std::vector<std::vector<int32_t>> seqs{tokens};
  const calibration_stats stats = calibrate(*model, seqs);
  const sensitivity_scores scores = score_groups(*model, space, stats, seqs, score_method::fisher);
  const std::string block = "model.layers.1.block_sparse_moe";
  size_t gi = 0;
  while (!space.groups[gi].name.starts_with(block + ".experts")) ++gi;
  const std::map<std::string, float> x_amax = input_amax_by_linear(spec, stats);
  // every expert's down_proj output (rows: its tokens) and its routing, from one forward
  struct run {
    std::map<std::string, std::vector<float>> down;
    std::map<int64_t, std::pair<std::vector<int64_t>, std::vector<float>>> routed;
  };
  const auto hooks_for = [&](run& r) {
    forward_hooks h([&r, block](const std::string& name, float* y, int64_t T, int64_t out) {
      if (name.starts_with(block + ".experts.") && name.ends_with(".w2")) r.down[name].assign(y, y + T * out);
    });
    h.routing = [&r, block](const std::string& moe, int64_t e, const int64_t* t, const float* w, int64_t n) {
      if (moe == block) r.routed[e] = {std::vector<int64_t>(t, t + n), std::vector<float>(w, w + n)};
    };
    return h;
  };
  const int64_t H = spec.dims.hidden, T = int64_t(tokens.size());
  for (size_t c = 1; c < space.groups[gi].candidates.size(); ++c) {
    const weight_quant_spec cand = space.groups[gi].candidates[c];
    run ref, quant;
    const llama_grads grads = model->forward_backward(tokens, hooks_for(ref));
    const std::unique_ptr<causal_lm> quantized = load_causal_lm(synth.dir);
    quantized->for_each_linear([&](llama_linear& W) {
      if (!W.name.starts_with(block + ".experts.")) return;
      const cpu::source_matrix src{W.w.data(), cpu::source_dtype::f32, W.out, W.in, W.name};
      nvfp4_options o = nvfp4_options_for(cand);
      fp8_options f = fp8_options_for(cand);
      // w1 / w3 share their global amax, as the export does
      const std::string e = W.name.substr(0, W.name.rfind('.'));
      float amax = 0.0f;
      quantized->for_each_linear([&](llama_linear& V) {
        if (V.name == e + ".w1" || V.name == e + ".w3" || (V.name == W.name))
          if (W.name.ends_with(".w2") == V.name.ends_with(".w2"))
            for (float v : V.w) amax = std::fmax(amax, std::fabs(v));
      });
      o.global_amax = amax;
      f.amax = amax;
      if (cand.format == format_id::nvfp4) {
        cpu::nvfp4_dequantize(cpu::nvfp4_quantize(src, o), W.w);
        W.act = {format_id::nvfp4, nvfp4_input_scale(x_amax.at(W.name))};
      } else {
        cpu::fp8_dequantize(cpu::fp8_quantize(src, f), W.w);
        W.act = {format_id::fp8_per_tensor, fp8_input_scale(x_amax.at(W.name))};
      }
    });
    quantized->forward(tokens, hooks_for(quant));
    std::vector<double> dB(size_t(T * H), 0.0), g(size_t(T * H), 0.0);
    for (const auto& [e, routed] : ref.routed) {
      const std::string down = block + ".experts." + std::to_string(e) + ".w2";
      const auto& [toks, ws] = routed;
      for (size_t i = 0; i < toks.size(); ++i)
        for (int64_t h = 0; h < H; ++h) {
          const size_t at = i * size_t(H) + size_t(h);
          dB[size_t(toks[i] * H + h)] += ws[i] * (double(quant.down.at(down)[at]) - double(ref.down.at(down)[at]));
          g[size_t(toks[i] * H + h)] = double(grads.dy.at(down)[at]) / ws[i];
        }
    }
    double want = 0.0;
    for (size_t i = 0; i < dB.size(); ++i) want += (g[i] * dB[i]) * (g[i] * dB[i]);
    ASSERT_GT(want, 0.0);
    EXPECT_NEAR(scores.score[gi][c], want, 1e-3 * want) << traits_of(cand.format).name;
  }
}

// Hessian scores of a model that holds one layer at a time: the whole model's, bit for bit, on every
// architecture (attention, dense and routed-expert groups at the MoE block output, Mamba, lm_head),
// across processes too (each scores its share); fisher and kl refuse such a model.
TEST(autoquant, hessian_scores_layer_by_layer_are_the_whole_models) {
  for (synth_arch arch : {synth_arch::llama, synth_arch::mixtral, synth_arch::qwen3_moe, synth_arch::nemotron_h}) {
    SCOPED_TRACE(std::string(to_string(arch)));
    const testing::synth_dir d(arch);
    const std::unique_ptr<causal_lm> whole = load_causal_lm(d.dir);
    const std::unique_ptr<causal_lm> layers = load_causal_lm(d.dir, {}, layer_weights::on_demand);
    search_settings st = settings(score_method::hessian);
    const search_space space = make_search_space(whole->spec(), st);
    std::vector<std::vector<int32_t>> seqs(3);
    for (size_t s = 0; s < seqs.size(); ++s)
      for (int i = 0; i < 20 + 7 * int(s); ++i) seqs[s].push_back(int32_t((i * 37 + 11 * int(s) + 3) % whole->vocab()));
    const calibration_stats stats = calibrate(*whole, seqs);
    const sensitivity_scores want = score_groups(*whole, space, stats, seqs, score_method::hessian);
    int64_t calls = 0;
    const sensitivity_scores got = score_groups(*layers, space, stats, seqs, score_method::hessian,
                                                [&](int64_t done, int64_t total) {
                                                  EXPECT_EQ(done, ++calls);
                                                  EXPECT_EQ(total, layers->layer_count() + 1);
                                                });
    EXPECT_EQ(calls, layers->layer_count() + 1);
    ASSERT_EQ(got.score.size(), want.score.size());
    int64_t scored = 0;
    for (size_t g = 0; g < want.score.size(); ++g) {
      EXPECT_EQ(got.score[g], want.score[g]) << space.groups[g].name;
      for (double v : want.score[g]) scored += v > 0.0;
    }
    EXPECT_GT(scored, 0);
    EXPECT_EQ(got.tokens, want.tokens);
    for (int64_t l = 0; l < layers->layer_count(); ++l) EXPECT_FALSE(layers->holds_layer(l));
    for (score_method m : {score_method::fisher, score_method::kl})
      EXPECT_THAT([&] { score_groups(*layers, space, stats, seqs, m); },
                  ::testing::ThrowsMessage<io_error>(::testing::HasSubstr("need the whole model")));
  }
}

}  // namespace
}  // namespace mixq
