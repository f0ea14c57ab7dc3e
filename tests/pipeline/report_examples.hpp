// Search records shaped like real runs, for the report tests: a 5-layer Llama (stories260K
// dimensions, down_proj too narrow for NVFP4) and a small Nemotron-H hybrid with MoE layers.
#pragma once

#include <cmath>
#include <string>

#include <fmt/format.h>

#include "pipeline/report/search_record.hpp"

namespace mixq::report_examples {

// A smooth, deterministic spread so scores look measured rather than constant.
inline double wobble(int i) { return 1.0 + 0.45 * std::sin(1.7 * i + 0.3); }

inline record_group llama_group(int layer, const std::string& part, const std::string& kind, int64_t weights,
                                double base, bool nvfp4_ok, int salt) {
  record_group g;
  g.name = fmt::format("model.layers.{}.{}", layer, part);
  g.kind = kind;
  g.layer = layer;
  g.modules = {g.name};
  g.weights = weights;
  const double s = base * wobble(layer * 7 + salt) * (layer == 0 || layer == 4 ? 2.5 : 1.0);
  if (nvfp4_ok)
    g.scores["nvfp4"] = s;
  else
    g.unavailable["nvfp4"] = "nvfp4 needs K (172) to be a multiple of 16";
  g.scores["fp8"] = s * 0.031;
  g.scores["bf16"] = 0.0;
  g.chosen = nvfp4_ok && s < base * 1.6 ? "nvfp4" : "fp8";
  return g;
}

inline search_record llama5() {
  search_record r;
  r.model = "../shared/models/stories260K";
  r.architecture = "llama";
  r.method = "fisher";
  r.formats = {"nvfp4", "fp8", "bf16"};
  r.format_bits = {{"nvfp4", 4.5}, {"fp8", 8.0}, {"bf16", 16.0}};
  r.budget_bits = 5.5;
  r.effective_bits = 5.47;
  r.score_samples = 8;
  r.score_tokens = 4096;
  r.seconds = {{"score", 12.3}, {"solve", 0.012}, {"measure", 41.7}};
  for (int l = 0; l < 5; ++l) {
    record_group qkv = llama_group(l, "self_attn.q_proj", "attention", 8192, 2.1e-3, true, 1);
    qkv.modules = {qkv.name, fmt::format("model.layers.{}.self_attn.k_proj", l),
                   fmt::format("model.layers.{}.self_attn.v_proj", l)};
    r.groups.push_back(qkv);
    r.groups.push_back(llama_group(l, "self_attn.o_proj", "attention", 4096, 1.2e-3, true, 2));
    record_group gate_up = llama_group(l, "mlp.gate_proj", "dense", 22016, 3.4e-3, true, 3);
    gate_up.modules = {gate_up.name, fmt::format("model.layers.{}.mlp.up_proj", l)};
    r.groups.push_back(gate_up);
    r.groups.push_back(llama_group(l, "mlp.down_proj", "dense", 11008, 6.0e-3, false, 4));
  }
  r.groups.back().disabled = true;
  r.groups.back().disabled_reason = "recipe keeps the last down_proj in bf16";
  r.groups.back().chosen = "bf16";
  record_group head;
  head.name = "lm_head";
  head.kind = "lm_head";
  head.layer = -1;
  head.modules = {"lm_head"};
  head.weights = 32768;
  head.scores = {{"nvfp4", 4.1e-2}, {"fp8", 9.5e-4}, {"bf16", 0.0}};
  head.chosen = "fp8";
  r.groups.push_back(head);
  for (int i = 0; i <= 23; ++i) {
    const double bits = 4.5 + 0.5 * i;
    r.front.push_back({bits, 3.1e-2 * std::exp(-0.55 * (bits - 4.5)) - 3.1e-2 * std::exp(-0.55 * 11.5)});
  }
  r.measured = {{4.62, 4.12, true, "searched"},       {5.47, 3.81, true, "searched"},
                {6.50, 3.66, true, "searched"},       {8.00, 3.60, true, "searched"},
                {5.02, 4.31, false, "uniform nvfp4"}, {8.00, 3.61, false, "uniform fp8"},
                {5.48, 4.02, false, "random (median of 20)"}};
  r.reference_ppl = 3.5896;
  return r;
}

inline search_record nemotron_h() {
  search_record r;
  r.model = "/tmp/nh-tiny";
  r.architecture = "nemotron_h";
  r.method = "kl";
  r.formats = {"nvfp4", "nvfp4_w4a16", "mxfp4", "fp8", "bf16"};
  r.format_bits = {{"nvfp4", 4.5}, {"nvfp4_w4a16", 4.5}, {"mxfp4", 4.25}, {"fp8", 8.0}, {"bf16", 16.0}};
  r.budget_bits = 6.0;
  r.effective_bits = 5.93;
  r.score_samples = 16;
  r.score_tokens = 8192;
  r.seconds = {{"score", 95.4}, {"solve", 0.4}};
  // Pattern M E M * E M: Mamba, MoE, Mamba, attention, MoE, Mamba.
  const char* pattern = "ME M*EM";
  int layer = 0, salt = 0;
  for (const char* p = pattern; *p; ++p) {
    if (*p == ' ') continue;
    const auto add = [&](const std::string& part, const std::string& kind, int64_t weights, double base) {
      record_group g;
      g.name = fmt::format("backbone.layers.{}.mixer.{}", layer, part);
      g.kind = kind;
      g.layer = layer;
      g.modules = {g.name};
      g.weights = weights;
      const double s = base * wobble(++salt);
      g.scores = {{"nvfp4", s}, {"nvfp4_w4a16", s * 0.6}, {"fp8", s * 0.03}, {"bf16", 0.0}};
      if (kind == "mamba")
        g.unavailable["mxfp4"] = "mxfp4 needs K (96) to be a multiple of 32";
      else
        g.scores["mxfp4"] = s * 1.3;
      g.chosen = s > base * 1.2 ? "fp8" : (salt % 3 == 0 ? "nvfp4_w4a16" : "nvfp4");
      r.groups.push_back(g);
    };
    if (*p == 'M') {
      add("in_proj", "mamba", 24576, 4e-3);
      add("out_proj", "mamba", 8192, 2e-3);
    } else if (*p == '*') {
      add("qkv_proj", "attention", 8192, 1.5e-3);
      add("o_proj", "attention", 4096, 9e-4);
    } else {
      add("experts", "moe", 8 * 2 * 64 * 96, 7e-4);
      add("shared_experts", "moe", 2 * 64 * 192, 1.1e-3);
      add("fc1_latent_proj", "latent", 64 * 32, 2.5e-3);
      for (int e = 0; e < 8; ++e)
        r.expert_tokens[fmt::format("backbone.layers.{}.mixer.experts.{}", layer, e)] =
            (e == 5 || (layer == 4 && e == 2)) ? 0 : int64_t(1024 * wobble(e + layer * 3));
    }
    ++layer;
  }
  record_group head;
  head.name = "lm_head";
  head.kind = "lm_head";
  head.layer = -1;
  head.modules = {"lm_head"};
  head.weights = 512 * 64;
  head.scores = {{"nvfp4", 2.2e-2}, {"nvfp4_w4a16", 1.4e-2}, {"mxfp4", 2.9e-2}, {"fp8", 6e-4}, {"bf16", 0.0}};
  head.chosen = "fp8";
  r.groups.push_back(head);
  for (int i = 0; i <= 12; ++i) {
    const double bits = 4.25 + 0.5 * i;
    r.front.push_back({bits, 2e-2 / (1 + bits - 4.25) - 2e-2 / (1 + 6.0)});
  }
  r.measured = {{5.93, 9.8, true, "searched"}, {4.5, 12.4, false, "uniform nvfp4"}};
  r.excluded = {{"mtp.layers.0.mixer.o_proj", "MTP head is not in the calibrated forward"},
                {"backbone.layers.1.mixer.gate", "router: kept bf16 by every recipe"}};
  return r;
}

}  // namespace mixq::report_examples
