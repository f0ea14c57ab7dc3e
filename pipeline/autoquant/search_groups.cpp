#include "pipeline/autoquant/search_groups.hpp"

#include <algorithm>
#include <cmath>
#include <set>

#include <fmt/format.h>

#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {
namespace {

std::string kind_of(const model_spec& spec, const linear_spec& l) {
  switch (l.role) {
    case linear_role::qkv:
    case linear_role::o: return "attention";
    case linear_role::mamba_in:
    case linear_role::mamba_out: return "mamba";
    case linear_role::expert:
    case linear_role::shared_expert:
    case linear_role::router: return "moe";
    case linear_role::latent: return "latent";
    case linear_role::lm_head: return "lm_head";
    case linear_role::gate_up:
    case linear_role::up:
    case linear_role::down: return "dense";
    default: break;
  }
  (void)spec;
  return "other";
}

// Active-MoE weight of a linear, as a multiple of 1/E: routed experts count top_k / E.
int64_t active_weight(const model_spec& spec, const search_settings& st, const linear_spec& l) {
  if (st.cost != cost_model::active_moe || spec.dims.experts <= 0) return 1;
  return l.role == linear_role::expert ? spec.dims.experts_per_token : spec.dims.experts;
}

}  // namespace

search_space make_search_space(const model_spec& spec, const search_settings& st) {
  search_space s;
  std::map<std::string, size_t> index;  // quant group -> position in s.groups
  std::vector<bool> glob_used(st.disable.size(), false);
  for (size_t i = 0; i < spec.linears.size(); ++i) {
    const linear_spec& l = spec.linears[i];
    s.total_weights += l.numel();
    const std::string key = l.quant_group.empty() ? l.module : l.quant_group;
    auto [it, fresh] = index.emplace(key, s.groups.size());
    if (fresh) {
      search_group g;
      g.name = key;
      g.kind = kind_of(spec, l);
      g.layer = l.block >= 0 ? spec.blocks[size_t(l.block)].layer : -1;
      s.groups.push_back(std::move(g));
    }
    search_group& g = s.groups[it->second];
    g.linears.push_back(int(i));
    g.weights += l.numel();
    if (l.role == linear_role::router) g.disabled = true, g.disabled_reason = "router (kept BF16)";
    if (!g.disabled && l.block >= 0 && spec.blocks[size_t(l.block)].mtp)  // (every score would be 0: no signal)
      g.disabled = true, g.disabled_reason = "MTP head: outside the calibrated forward pass, nothing to score (kept BF16)";
    for (size_t k = 0; k < st.disable.size(); ++k)
      if (glob_match(st.disable[k].first, l.module)) {
        glob_used[k] = true;
        if (!g.disabled) g.disabled = true, g.disabled_reason = fmt::format("disabled by '{}' (line {})", st.disable[k].first, st.disable[k].second);
      }
  }
  for (size_t k = 0; k < st.disable.size(); ++k)
    if (!glob_used[k])
      s.warnings.push_back(fmt::format("line {}: search.disable '{}' matches no module of this model",
                                       st.disable[k].second, st.disable[k].first));
  for (search_group& g : s.groups) {
    g.candidates.push_back(weight_quant_spec{format_id::bf16});
    if (g.disabled) continue;
    for (const weight_quant_spec& c : st.candidates) {
      std::string why;
      std::set<std::string> sharing;  // (scale_sharing_key of the group's linears)
      for (int i : g.linears) {
        const linear_spec& l = spec.linears[size_t(i)];
        if (auto reason = format_cannot_hold(c.format, l.out_features, l.in_features)) {
          why = fmt::format("{}: {}", l.module, *reason);
          break;
        }
        const bool picks_per_tensor = (c.format == format_id::nvfp4 || c.format == format_id::nvfp4_w4a16) &&
                                      c.nvfp4 == nvfp4_selector::mse_four_over_six;
        if (picks_per_tensor && !sharing.insert(scale_sharing_key(l.module)).second) {
          why = fmt::format("{}: mse+four_over_six picks its normalizer per tensor, and fused siblings share one "
                            "weight_scale_2 (use mse or four_over_six)", l.module);
          break;
        }
      }
      if (why.empty()) g.candidates.push_back(c);
      else g.unavailable[std::string(traits_of(c.format).name)] = why;
    }
  }
  return s;
}

int64_t group_cost(const search_space& s, const model_spec& spec, const search_settings& st, const search_group& g,
                   const weight_quant_spec& c) {
  (void)s;
  const int64_t quarter_bits = int64_t(traits_of(c.format).effective_bits * 4.0 + 0.5);
  int64_t cost = 0;
  for (int i : g.linears) {
    const linear_spec& l = spec.linears[size_t(i)];
    cost += l.numel() * quarter_bits * active_weight(spec, st, l);
  }
  return cost;
}

int64_t cost_per_bit(const search_space& s, const model_spec& spec, const search_settings& st) {
  (void)s;
  int64_t c = 0;
  for (const linear_spec& l : spec.linears) c += l.numel() * 4 * active_weight(spec, st, l);
  return c;
}

int64_t least_cost(const search_space& s, const model_spec& spec, const search_settings& st) {
  int64_t lo = 0;
  for (const search_group& g : s.groups) {
    int64_t least = group_cost(s, spec, st, g, g.candidates.front());  // (bf16)
    if (!g.disabled)
      for (const weight_quant_spec& c : g.candidates) least = std::min(least, group_cost(s, spec, st, g, c));
    lo += least;
  }
  return lo;
}

void require_reachable_budget(const search_space& s, const model_spec& spec, const search_settings& st,
                              std::string_view origin) {
  const int64_t per_bit = cost_per_bit(s, spec, st), lo = least_cost(s, spec, st);
  if (int64_t(std::floor(st.effective_bits * double(per_bit))) < lo) {
    const double least = double(lo) / double(per_bit);
    std::string shown;  // with the digits that show it above the budget (5.3504, not 5.350, against 5.35)
    for (int digits = 3; digits <= 9; ++digits)
      if (shown = fmt::format("{:.{}f}", least, digits); std::stod(shown) > st.effective_bits) break;
    throw io_error(fmt::format("{}: search.effective_bits {} is below what this model can reach: {} bits with "
                               "every group in its smallest candidate (groups a format cannot hold, disabled ones "
                               "and routers stay larger)",
                               origin, st.effective_bits, shown));
  }
}

}  // namespace mixq
