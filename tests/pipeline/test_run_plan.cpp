// mixq plan: the stored bytes of each quantized linear against the encoder that writes them, and the
// plan of Nemotron 3 Super (its real config.json) under the release recipe. That the planned export
// size is the written one, byte for byte, is checked on real exports in test_quantize_run.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/io/quantized_linear.hpp"
#include "pipeline/plan/run_plan.hpp"

namespace mixq {
namespace {

namespace fs = std::filesystem;

fs::path source_dir() {
  const char* src = std::getenv("MIXQ_SOURCE_DIR");
  return src ? fs::path(src) : fs::path(__FILE__).parent_path().parent_path().parent_path();
}

model_spec config_spec(const std::string& name) {
  std::ifstream in(source_dir() / "tests" / "data" / "configs" / name);
  if (!in) throw std::runtime_error("cannot read " + name);
  return model_spec_from_config(nlohmann::json::parse(in), name);
}

// A quantized linear of the shape with zeroed payloads: the encoder only lays them out.
quantized_linear shaped(format_id f, int64_t out, int64_t in) {
  quantized_linear q;
  q.module = "m";
  q.format = f;
  q.input_scale = 1.0f;
  q.nvfp4.rows = q.fp8.rows = out;
  q.nvfp4.cols = q.fp8.cols = in;
  q.nvfp4.global_scale = 1.0f;
  q.nvfp4.packed.resize(size_t(out * in / 2));
  q.nvfp4.block_scales.resize(size_t(out * in / kNvfp4Block));
  q.fp8.codes.resize(size_t(out * in));
  q.fp8.scales = {1.0f};
  return q;
}

TEST(run_plan, quantized_linear_bytes_are_what_the_encoder_writes) {
  for (format_id f : {format_id::nvfp4, format_id::nvfp4_w4a16, format_id::fp8_per_tensor})
    for (export_layout layout : {export_layout::modelopt, export_layout::compressed_tensors})
      for (auto [out, in] : {std::pair<int64_t, int64_t>{16, 16}, {48, 160}, {7, 4096}}) {
        uint64_t written = 0;
        for (const encoded_tensor& t : encode_quantized_linear(shaped(f, out, in), layout)) written += t.bytes.size();
        EXPECT_EQ(quantized_linear_bytes(f, out, in), written) << traits_of(f).name << " " << out << "x" << in;
      }
  EXPECT_FALSE(quantized_linear_bytes(format_id::mxfp4, 16, 32));  // measured, never exported
  EXPECT_FALSE(quantized_linear_bytes(format_id::nf4, 16, 64));
}

TEST(run_plan, nemotron3_super_under_the_release_recipe) {
  const model_spec spec = config_spec("nemotron3-super-120b-a12b.json");
  const recipe r = load_recipe("nemotron_super_nvfp4_release");
  const run_plan p = make_run_plan(spec, r, config_dtypes(spec, dtype::bf16), {16, 1, 262144});
  EXPECT_EQ(p.blocks[int(block_kind::mamba)], 40);
  EXPECT_EQ(p.blocks[int(block_kind::moe)], 40);
  EXPECT_EQ(p.blocks[int(block_kind::attention)], 8);
  EXPECT_EQ(p.mtp_blocks, 2);  // "*E"
  EXPECT_EQ(p.parameters, 123'611'033'088);
  // the BF16 release: its 41 · 512 router score-correction biases in F32, everything else in BF16
  EXPECT_EQ(p.source_bytes, uint64_t(p.parameters - 20'992) * 2 + 20'992 * 4);

  int64_t linears = 0, parameters = 0, quantized = 0;
  uint64_t bytes = 0;
  for (const format_share& s : p.formats) {
    linears += s.linears;
    parameters += s.parameters;
    bytes += s.bytes;
    if (s.format != format_id::bf16) quantized += s.linears;
    // Each format's bytes from its effective bits, plus the F32 scalars the export adds per linear.
    const int scalars = s.format == format_id::bf16 ? 0 : 2;
    EXPECT_EQ(s.bytes, uint64_t(traits_of(s.format).effective_bits * double(s.parameters) / 8.0) +
                           uint64_t(scalars) * 4 * uint64_t(s.linears))
        << traits_of(s.format).name;
  }
  EXPECT_EQ(linears, int64_t(spec.linears.size()));
  EXPECT_EQ(parameters, p.linear_parameters);
  EXPECT_EQ(quantized, p.quantized_linears);
  // Every routed expert of the 40 MoE layers is NVFP4 (the MTP head's stay BF16, as in the release).
  ASSERT_EQ(p.formats.back().format, format_id::nvfp4);
  EXPECT_EQ(p.formats.back().linears, 40 * 512 * 2);
  EXPECT_EQ(p.kv_scales, 9);  // 8 attention layers and the MTP head's
  // by role: the MTP head's 2 · 512 experts stay BF16, the 41 routers always do
  const auto role_formats = [&](linear_role role) {
    std::map<format_id, int64_t> out;
    for (const run_plan::role_share& rs : p.roles)
      if (rs.role == role)
        for (const format_share& s : rs.formats) out[s.format] = s.linears;
    return out;
  };
  EXPECT_EQ(role_formats(linear_role::expert),
            (std::map<format_id, int64_t>{{format_id::bf16, 1024}, {format_id::nvfp4, 40 * 512 * 2}}));
  EXPECT_EQ(role_formats(linear_role::router), (std::map<format_id, int64_t>{{format_id::bf16, 41}}));
  EXPECT_EQ(role_formats(linear_role::mamba_in), (std::map<format_id, int64_t>{{format_id::fp8_per_tensor, 40}}));
  EXPECT_EQ(p.export_bytes, bytes + (p.source_bytes - uint64_t(p.linear_parameters) * 2) + 9 * 8);
  EXPECT_TRUE(p.refused.empty());
  EXPECT_NEAR(p.effective_bits, 5.07, 0.01);

  // 16 processes: 64 calibration sequences, 4 each; the quantized linears in shares of at most ceil(n / 16)
  EXPECT_EQ(p.sequences_per_process, 4);
  EXPECT_EQ(p.linears_per_process, (p.quantized_linears + 15) / 16);
  EXPECT_EQ(p.quantized_bytes, bytes - p.formats.front().bytes);
  EXPECT_EQ(p.scoring_bytes, 0u);

  // Fixed rules run layer by layer: the working copy is the embeddings, final norm, lm_head (untied)
  // and the largest layer, a MoE layer of 512 latent experts with its shared expert and router.
  EXPECT_TRUE(p.layer_by_layer);
  const model_dims& d = spec.dims;
  const int64_t outside = 2 * d.vocab * d.hidden + d.hidden;
  const int64_t moe_layer = d.hidden                                                   // pre-norm
                            + d.experts * d.hidden + d.experts                         // router, score bias
                            + 2 * d.moe_latent * d.hidden                              // fc1 / fc2 latent
                            + d.experts * 2 * d.moe_intermediate * d.moe_latent        // routed experts
                            + 2 * d.shared_intermediate * d.hidden;                    // shared expert
  EXPECT_EQ(p.fp32_model_bytes, uint64_t(outside + moe_layer) * 4);
  EXPECT_EQ(p.residual_stream_bytes, uint64_t(4 * 256 * d.hidden) * 4);  // 4 sequences of 256 tokens
  // verifying the export is the peak: the working copy, the quantized weights, both mappings
  EXPECT_EQ(p.logits_bytes, uint64_t(256 * d.vocab) * 4);  // one thread: one window's logits
  // and of the quantized weights one layer's at a time: a MoE layer's NVFP4 experts and FP8 shared expert
  const auto q = [](format_id f, int64_t out, int64_t in) { return *quantized_linear_bytes(f, out, in); };
  EXPECT_EQ(p.quantized_layer_bytes,
            uint64_t(d.experts) * (q(format_id::nvfp4, d.moe_intermediate, d.moe_latent) +
                                   q(format_id::nvfp4, d.moe_latent, d.moe_intermediate)) +
                q(format_id::fp8_per_tensor, d.shared_intermediate, d.hidden) +
                q(format_id::fp8_per_tensor, d.hidden, d.shared_intermediate));
  EXPECT_EQ(p.peak_bytes, p.fp32_model_bytes + p.residual_stream_bytes + p.logits_bytes + p.quantized_layer_bytes +
                              p.source_bytes + p.export_bytes);
  EXPECT_EQ(p.held_bytes, p.fp32_model_bytes + p.residual_stream_bytes + p.logits_bytes + p.quantized_layer_bytes);

  // holding the whole model: all but the MTP head, in F32
  plan_setup whole{16, 1, 262144};
  whole.weights = layer_weights::all;
  const run_plan w = make_run_plan(spec, r, config_dtypes(spec, dtype::bf16), whole);
  EXPECT_FALSE(w.layer_by_layer);
  EXPECT_EQ(w.fp32_model_bytes, uint64_t(120'668'707'840) * 4);
  EXPECT_EQ(w.residual_stream_bytes, 0u);
  EXPECT_EQ(w.peak_bytes, w.fp32_model_bytes + w.logits_bytes + w.quantized_bytes + w.source_bytes + w.export_bytes);
}

TEST(run_plan, a_search_is_bounded_by_its_smallest_candidates_and_by_bf16) {
  const model_spec spec = config_spec("nemotron3-super-120b-a12b.json");
  const recipe r = load_recipe("auto_nemotron_nvfp4_fp8_5p0bits");
  const run_plan p = make_run_plan(spec, r, [](const std::string&) { return dtype::bf16; });
  EXPECT_TRUE(p.searched);
  EXPECT_LT(p.least_effective_bits, 5.0);  // reachable on the real model (unlike on the tiny one)
  EXPECT_TRUE(p.refused.empty()) << p.refused;
  EXPECT_LT(p.export_bytes_min, p.export_bytes_budget);
  EXPECT_LT(p.export_bytes_budget, p.export_bytes_max);
  EXPECT_EQ(p.export_bytes_max, p.source_bytes + uint64_t(p.kv_scales) * 8);
  // scoring holds the searched linears of the forward pass (not the MTP head's) in NVFP4 and FP8, as stored
  uint64_t scored = 0;
  for (const linear_spec& l : spec.linears)
    if ((l.block < 0 || !spec.blocks[size_t(l.block)].mtp) && l.role != linear_role::router &&
        l.role != linear_role::lm_head && l.role != linear_role::qkv && l.role != linear_role::o &&
        l.role != linear_role::latent)
      scored += uint64_t(l.numel()) * 9 / 16 + 8 + uint64_t(l.numel()) + 8;
  EXPECT_EQ(p.scoring_bytes, scored);
  EXPECT_GT(p.scoring_activation_bytes, 0u);
  const uint64_t scoring = p.fp32_model_bytes + p.scoring_bytes + p.scoring_activation_bytes + p.source_bytes;
  const uint64_t verifying = p.fp32_model_bytes + p.logits_bytes + p.quantized_bytes + p.source_bytes + p.export_bytes_budget;
  EXPECT_EQ(p.peak_bytes, std::max(scoring, verifying));
  // 5 bits over 123 B linear weights: at most 5/16 of their BF16 bytes, plus each quantized linear's
  // two F32 scales, the KV scales and every other tensor as it is
  EXPECT_NEAR(double(p.export_bytes_budget),
              5.0 / 8.0 * double(p.linear_parameters) + 8.0 * double(p.quantized_linears) + 8.0 * double(p.kv_scales) +
                  double(p.source_bytes - uint64_t(p.linear_parameters) * 2),
              1.0);
}

TEST(run_plan, a_hessian_search_scores_layer_by_layer) {
  const model_spec spec = config_spec("nemotron3-super-120b-a12b.json");
  recipe r = load_recipe("auto_nemotron_nvfp4_fp8_5p0bits");
  const auto bf16 = [](const std::string&) { return dtype::bf16; };
  const run_plan fisher = make_run_plan(spec, r, bf16);
  EXPECT_FALSE(fisher.layer_by_layer);  // fisher runs backward through the whole model
  r.search.method = score_method::hessian;
  const run_plan p = make_run_plan(spec, r, bf16);
  EXPECT_TRUE(p.layer_by_layer);
  // one layer's candidates (a MoE layer's 512 experts), not every layer's
  EXPECT_EQ(p.scoring_bytes, p.scoring_layer_bytes);
  EXPECT_LT(p.scoring_bytes * 30, fisher.scoring_bytes);
  EXPECT_LT(p.fp32_model_bytes * 30, fisher.fp32_model_bytes);
  EXPECT_LT(p.held_bytes * 5, fisher.held_bytes);
  plan_setup whole;
  whole.weights = layer_weights::all;
  EXPECT_EQ(make_run_plan(spec, r, bf16, whole).scoring_bytes, fisher.scoring_bytes);
}

// The arithmetic: a forward pass is 2 FLOP per weight (routed experts at k of E) per token, plus
// attention's scores and sums; evaluation is three passes; scoring adds its passes and replays.
TEST(run_plan, arithmetic_per_process) {
  const model_spec spec = config_spec("nemotron3-super-120b-a12b.json");
  const model_dims& d = spec.dims;
  recipe r = load_recipe("nemotron_super_nvfp4_release");
  const auto bf16 = [](const std::string&) { return dtype::bf16; };
  plan_setup one;
  one.max_positions = 262144;
  const run_plan p = make_run_plan(spec, r, bf16, one);  // 64 sequences of 256 tokens in one process
  double linear = 0.0;
  for (const linear_spec& l : spec.linears)
    if (l.block < 0 || !spec.blocks[size_t(l.block)].mtp)
      linear += 2.0 * double(l.numel()) * (l.expert < 0 ? 1.0 : double(d.experts_per_token) / double(d.experts));
  const double attention = 8 * 2.0 * double(d.heads * d.head_dim) * 256;  // 8 attention layers, T / 2 keys each
  const double mamba = 40 * 6.0 * double(d.mamba_heads * d.mamba_head_dim * d.ssm_state);
  const double tokens = 64 * 256;
  EXPECT_NEAR(p.calibrate_flops, (linear + attention + mamba) * tokens, 1e-9 * p.calibrate_flops);
  EXPECT_DOUBLE_EQ(p.evaluate_flops, 3 * p.calibrate_flops);
  EXPECT_EQ(p.score_flops, 0.0);
  // the active parameters are the GEMMs' weights, the embedding table and the norms
  EXPECT_NEAR(linear / 2 + double(d.vocab * d.hidden), double(p.active_parameters), 1e-3 * double(p.active_parameters));
  // 16 processes share the sequences
  plan_setup sixteen = one;
  sixteen.processes = 16;
  EXPECT_NEAR(make_run_plan(spec, r, bf16, sixteen).calibrate_flops * 16, p.calibrate_flops, 1e-9 * p.calibrate_flops);
  // a hessian search: a forward pass over the scored sequences and two GEMMs per group and candidate
  r = load_recipe("auto_nemotron_nvfp4_fp8_5p0bits");
  r.search.method = score_method::hessian;
  const run_plan h = make_run_plan(spec, r, bf16, one);
  r.search.method = score_method::fisher;
  const run_plan f = make_run_plan(spec, r, bf16, one);
  const double scored = double(std::min<int64_t>(r.search.score_samples, 64) * 256);
  EXPECT_NEAR(f.score_flops - h.score_flops, 2 * (linear + attention + mamba) * scored, 1e-6 * f.score_flops);
  EXPECT_GT(h.score_flops, (linear + attention + mamba) * scored);  // (plus the replays)
  EXPECT_GT(gemm_rate(1), 1e8);  // some GFLOP/s on any machine
}

TEST(run_plan, calibration_sequences_as_quantize_cuts_the_data) {
  const model_spec spec = config_spec("nemotron3-super-120b-a12b.json");
  const recipe r = load_recipe("nemotron_super_nvfp4_release");  // 64 samples of 256 tokens
  const auto plan = [&](int64_t tokens, int processes) {
    plan_setup setup;
    setup.processes = processes;
    setup.calibration_tokens = tokens;
    return make_run_plan(spec, r, config_dtypes(spec, dtype::bf16), setup);
  };
  EXPECT_FALSE(plan(-1, 1).sequences_known);
  EXPECT_EQ(plan(-1, 1).calibration_sequences, 64);      // unknown: at most the recipe's
  EXPECT_EQ(plan(2816, 1).calibration_sequences, 11);    // whole windows only
  EXPECT_EQ(plan(2816, 4).sequences_per_process, 3);     // 11 over 4 processes: 3, 3, 3, 2
  EXPECT_EQ(plan(1'000'000, 1).calibration_sequences, 64);
  EXPECT_EQ(plan(100, 1).calibration_sequences, 1);      // shorter than a window: taken whole
  EXPECT_EQ(plan(1, 1).calibration_sequences, 0);
  EXPECT_TRUE(plan(2816, 1).sequences_known);
}

TEST(run_plan, memory_warning_when_the_processes_here_exceed_what_is_available) {
  run_plan p;
  p.peak_bytes = 5'000'000'000;  // (mapped files count in the peak, not in the warning)
  p.held_bytes = 3'000'000'000;
  EXPECT_EQ(memory_warning(p, 1, 4'000'000'000), "");
  EXPECT_EQ(memory_warning(p, 1, 0), "");  // unknown: no warning
  const std::string w = memory_warning(p, 2, 4'000'000'000);
  EXPECT_NE(w.find("6.00 GB"), std::string::npos) << w;
  EXPECT_NE(w.find("2 processes here"), std::string::npos) << w;
  EXPECT_NE(w.find("4.00 GB"), std::string::npos) << w;
  EXPECT_GT(host_available_memory(), 0u);  // (Linux: /proc/meminfo)
  const uint64_t before = process_resident_memory();
  std::vector<char> touched(64 << 20, 1);     // 64 MiB, every page written
  EXPECT_GE(process_resident_memory(), before + (60u << 20));
  EXPECT_EQ(touched[12345], 1);
}

}  // namespace
}  // namespace mixq
