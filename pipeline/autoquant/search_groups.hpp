// The decisions of a mixed-precision search (shared/reference/autoquantize-numerics.md §1.5-1.6):
// one per quant group of the model spec (q/k/v together, gate/up together, every routed expert of
// a MoE layer together; o_proj, down_proj, Mamba in/out_proj, latent projections, lm_head alone),
// each with the candidate formats its shapes can hold (BF16 always) and its cost per format.
// Routers and the recipe's disabled globs stay BF16 but count in the denominator, which is every
// linear weight of the model (embeddings and norms are outside it, as in Model Optimizer).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pipeline/model/model_spec.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {

struct search_group {
  std::string name;                   // the quant group key ("model.layers.0.self_attn" for q/k/v)
  std::string kind;                   // attention | mamba | moe | dense | latent | lm_head | other
  int layer = -1;
  std::vector<int> linears;           // indices into model_spec::linears
  int64_t weights = 0;
  std::vector<weight_quant_spec> candidates;    // index 0 is bf16, then the holdable recipe candidates
  std::map<std::string, std::string> unavailable;  // candidate name -> why its shapes cannot hold it
  bool disabled = false;              // kept BF16 (router, recipe glob); still in the denominator
  std::string disabled_reason;
};

struct search_space {
  std::vector<search_group> groups;   // in forward order of their first linear
  int64_t total_weights = 0;          // the denominator's weight count
  std::vector<std::string> warnings;  // disable globs that match nothing
};

search_space make_search_space(const model_spec& spec, const search_settings& settings);

// Costs are integers so the solver is exact: quarter-bits x weights, under active_moe also x top_k for
// routed experts and x E for everything else (E = num_experts). effective bits = cost / cost_per_bit.
// The cost of group g in candidate c.
int64_t group_cost(const search_space& s, const model_spec& spec, const search_settings& settings,
                   const search_group& g, const weight_quant_spec& c);
// The denominator in the same units: every linear weight at 1 bit (x 4 quarter-bits).
int64_t cost_per_bit(const search_space& s, const model_spec& spec, const search_settings& settings);

// The least cost the groups can reach: each in its cheapest candidate, a disabled one in BF16.
int64_t least_cost(const search_space& s, const model_spec& spec, const search_settings& settings);
// io_error naming `origin` where settings.effective_bits is below that (as the solver rounds the
// budget): checked before any calibration or scoring is spent on an unreachable budget.
void require_reachable_budget(const search_space& s, const model_spec& spec, const search_settings& settings,
                              std::string_view origin);

}  // namespace mixq
