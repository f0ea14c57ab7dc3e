// A recipe applied to a model: glob matching over module names, then one format per linear, with
// routers kept BF16, shape fallbacks, and one format per quant group (fused siblings).
#include <map>

#include <fmt/format.h>

#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {

// Greedy with one backtrack point: on a mismatch, the last '*' takes one more character. A later
// '*' makes earlier ones irrelevant, so the cost is O(|pattern| · |name|) whatever the input.
bool glob_match(std::string_view pattern, std::string_view name) {
  size_t p = 0, n = 0;
  size_t star = std::string_view::npos, star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || (pattern[p] != '*' && pattern[p] == name[n]))) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

namespace {

std::string rule_source(const recipe& r, int rule) {
  return rule < 0 ? std::string("the default") : fmt::format("the rule at line {}", r.rules[size_t(rule)].line);
}

}  // namespace

quant_plan plan_quantization(const recipe& r, const model_spec& spec) {
  quant_plan plan;
  plan.linears.resize(spec.linears.size());
  const weight_quant_spec keep{format_id::bf16};
  std::vector<bool> shape_fallback(spec.linears.size(), false);
  std::vector<bool> rule_matches(r.rules.size(), false);

  for (size_t i = 0; i < spec.linears.size(); ++i) {
    const linear_spec& l = spec.linears[i];
    linear_decision& d = plan.linears[i];
    for (size_t k = 0; k < r.rules.size(); ++k) {
      if (!glob_match(r.rules[k].pattern, l.module)) continue;
      rule_matches[k] = true;
      if (d.rule < 0) d.rule = int(k);
    }
    d.weight = d.rule < 0 ? r.default_weight : r.rules[size_t(d.rule)].weight;
    if (l.role == linear_role::router) {
      // The router picks the experts: a quantized router changes which experts run.
      if (d.rule >= 0 && d.weight.format != format_id::bf16) d.note = "router stays BF16";
      d.weight = keep;
    } else if (l.block >= 0 && spec.blocks[size_t(l.block)].mtp && traits_of(d.weight.format).quantizes_activations) {
      // No calibration token reaches the MTP head: an input scale there would be made up.
      d.note = fmt::format("MTP head: outside the calibrated forward pass, so {} has no input scale to take "
                           "(weight-only nvfp4_w4a16 can quantize it)", traits_of(d.weight.format).name);
      d.weight = keep;
    } else if (d.weight.format != format_id::bf16) {
      if (auto reason = format_cannot_hold(d.weight.format, l.out_features, l.in_features)) {
        d.weight = keep;
        d.note = std::move(*reason);
        shape_fallback[i] = true;
      }
    }
  }

  // Fused siblings run as one GEMM in the engines, so they need one format.
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < spec.linears.size(); ++i) groups[spec.linears[i].quant_group].push_back(i);
  for (const auto& [group, members] : groups) {
    const auto wanted = [&](size_t i) {
      const linear_decision& d = plan.linears[i];
      if (spec.linears[i].role == linear_role::router) return format_id::bf16;
      return d.rule < 0 ? r.default_weight.format : r.rules[size_t(d.rule)].weight.format;
    };
    const size_t first = members.front();
    for (size_t i : members) {
      if (wanted(i) == wanted(first)) continue;
      throw io_error(fmt::format(
          "{}: quant group '{}' mixes formats: {} gets {} from {}, {} gets {} from {}; fused linears need one format",
          r.origin, group, spec.linears[first].module, traits_of(wanted(first)).name, rule_source(r, plan.linears[first].rule),
          spec.linears[i].module, traits_of(wanted(i)).name, rule_source(r, plan.linears[i].rule)));
    }
    for (size_t cause : members) {
      if (!shape_fallback[cause]) continue;
      for (size_t i : members) {
        linear_decision& d = plan.linears[i];
        if (i == cause || d.weight.format == format_id::bf16) continue;
        d.weight = keep;
        d.note = fmt::format("fused with {}, which stays BF16: {}", spec.linears[cause].module, plan.linears[cause].note);
      }
      break;
    }
  }

  // Siblings that share one weight_scale_2 need one normalizer: 448 (max, mse, mse_multiplier) or
  // 256 (four_over_six); mse+four_over_six picks its own per tensor.
  const auto normalizer_of = [&](const weight_quant_spec& w) -> float {
    if (w.format != format_id::nvfp4 && w.format != format_id::nvfp4_w4a16) return -1.0f;  // (no scale_2)
    if (w.nvfp4 == nvfp4_selector::mse_four_over_six) return 0.0f;
    return w.nvfp4 == nvfp4_selector::four_over_six ? kNvfp4FourOverSixNormalizer : kNvfp4Normalizer;
  };
  std::map<std::string, std::vector<size_t>> sharing;
  for (size_t i = 0; i < spec.linears.size(); ++i) sharing[scale_sharing_key(spec.linears[i].module)].push_back(i);
  for (const auto& [key, members] : sharing) {
    if (members.size() < 2) continue;
    for (size_t i : members) {
      const float n = normalizer_of(plan.linears[i].weight), first = normalizer_of(plan.linears[members.front()].weight);
      if (n < 0.0f || (n != 0.0f && n == first)) continue;
      const size_t other = i == members.front() ? members[1] : members.front();
      const auto gets = [&](size_t k) {
        const weight_quant_spec& w = plan.linears[k].weight;  // (an NVFP4 format here)
        return fmt::format("{} gets {}/{} from {}", spec.linears[k].module, traits_of(w.format).name,
                           selector_name(w.nvfp4), rule_source(r, plan.linears[k].rule));
      };
      throw io_error(fmt::format(
          "{}: {} and {} share one weight_scale_2 (the engines run them as one GEMM), so they need one NVFP4 "
          "normalizer: {}, {}{}; use max, mse or mse_multiplier (448) or four_over_six (256) for all of them",
          r.origin, spec.linears[other].module, spec.linears[i].module, gets(other), gets(i),
          n == 0.0f || first == 0.0f ? " (mse+four_over_six picks its normalizer per tensor)" : ""));
    }
  }

  for (size_t k = 0; k < r.rules.size(); ++k)
    if (!rule_matches[k])
      plan.warnings.push_back(fmt::format("{}:{}: rule '{}' matches no module of this model", r.origin,
                                          r.rules[k].line, r.rules[k].pattern));
  return plan;
}

}  // namespace mixq
