// Recipes: what `mixq quantize` does to a model, as YAML (schema in recipes/README.md).
// A recipe names the calibration data, per-module format rules (glob on module names, first match
// wins, then the default), the weight scale selector per rule, the KV-cache format and the export
// layout. Shipped recipes live in recipes/*.yaml and are also compiled into the binary, so
// `--recipe mamba_moe_fp8_aggressive` works without the source tree.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "formats/weight_fake_quant.hpp"
#include "pipeline/io/quantized_linear.hpp"  // export_layout
#include "pipeline/model/model_spec.hpp"

namespace mixq {

struct calibration_settings {
  std::string data;        // token / text / JSONL file; empty: the built-in calibration text
  int64_t samples = 64;    // sequences
  int64_t seq_len = 256;   // tokens per sequence (capped at the model's max_position_embeddings)
  int64_t batch = 1;       // sequences per forward call
};

struct format_rule {
  std::string pattern;       // glob over module names: '*' any run of characters, '?' one character
  weight_quant_spec weight;  // format (bf16: keep) and weight scale selector
  int line = 0;              // line in the recipe file, for messages
};

enum class kv_cache_format { none, fp8 };

std::string_view to_string(kv_cache_format f);
std::string_view to_string(export_layout l);

struct export_settings {
  export_layout layout = export_layout::modelopt;
  uint64_t max_shard_bytes = 5'000'000'000;  // "5GB", "500MB", or a byte count in YAML
};

// The mixed-precision search (AutoQuantize): each quant group picks one candidate format (BF16 is
// always one) by measured sensitivity, minimizing the summed score under an effective-bits budget.
enum class score_method { fisher, kl, hessian };
enum class cost_model { weight, active_moe };  // active_moe: routed experts weigh top_k / num_experts
std::string_view to_string(score_method m);
std::string_view to_string(cost_model c);

struct search_settings {
  bool enabled = false;
  double effective_bits = 0.0;                  // the budget, over every linear weight
  std::vector<weight_quant_spec> candidates;    // besides bf16, in recipe order
  score_method method = score_method::fisher;
  int64_t score_samples = 8;                    // calibration sequences the scores are measured on
  std::vector<std::pair<std::string, int>> disable;  // globs (and recipe lines) kept BF16
  cost_model cost = cost_model::weight;
};

struct recipe {
  std::string name;          // "mamba_moe_fp8_aggressive"
  std::string origin;        // file path or "built-in:<name>", for messages
  std::string description;
  calibration_settings calibration;
  std::vector<format_rule> rules;   // in file order: the first match wins
  weight_quant_spec default_weight{format_id::bf16};  // for modules no rule matches (bf16 unless the recipe says)
  kv_cache_format kv_cache = kv_cache_format::none;
  export_settings output;
  search_settings search;    // enabled: the formats come from the search, not from rules
};

// Parses YAML text; `origin` names it in messages. Unknown keys, bad values and malformed YAML throw
// mixq::io_error naming origin and line ("recipes/x.yaml:12: unknown key 'formt' in rule").
recipe parse_recipe(std::string_view yaml_text, std::string_view origin);
// A path to a .yaml file, or the name of a built-in recipe. Errors list the built-in names.
recipe load_recipe(std::string_view path_or_name);
// Names of the recipes compiled into the binary, sorted.
std::vector<std::string> builtin_recipe_names();

// Glob match over a whole module name ('*' may match dots).
bool glob_match(std::string_view pattern, std::string_view name);

// One linear's fate under a recipe.
struct linear_decision {
  weight_quant_spec weight;  // bf16 when kept unquantized
  int rule = -1;             // index into recipe::rules; -1: the default
  std::string note;          // why it stays BF16 against its rule ("nvfp4 needs K ... (172)"), else empty
};

struct quant_plan {
  std::vector<linear_decision> linears;  // parallel to model_spec::linears
  std::vector<std::string> warnings;     // rules that match no module: "recipes/x.yaml:9: rule '*foo*' matches nothing"
};

// Applies the rules to every linear of the spec. Routers are never quantized (whatever the rules).
// A format the shape cannot hold falls back to BF16 with a note, and so does every other member of
// the linear's quant group (fused siblings must share a format). Rules that give members of one
// quant group different formats are an error naming the group, both modules and the rule lines.
quant_plan plan_quantization(const recipe& r, const model_spec& spec);

}  // namespace mixq
