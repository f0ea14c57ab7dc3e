// libFuzzer target for the recipe parser and planner. Any input must either give a recipe whose
// plan for a small MoE model has one decision per linear, or throw io_error: any other
// exception, crash, hang, leak or UB is a bug.
#include <cstdint>
#include <string_view>

#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace {

mixq::linear_spec linear(const char* module, int64_t out, int64_t in, mixq::linear_role role, const char* group) {
  mixq::linear_spec l;
  l.module = module;
  l.out_features = out;
  l.in_features = in;
  l.role = role;
  l.quant_group = group;
  return l;
}

// Fused q/k/v, a router, experts whose down_proj K (40) NVFP4 cannot hold, an lm_head.
const mixq::model_spec& toy_spec() {
  static const mixq::model_spec spec = [] {
    using mixq::linear_role;
    mixq::model_spec s;
    s.linears = {linear("model.layers.0.self_attn.q_proj", 64, 64, linear_role::qkv, "model.layers.0.self_attn"),
                 linear("model.layers.0.self_attn.k_proj", 32, 64, linear_role::qkv, "model.layers.0.self_attn"),
                 linear("model.layers.0.self_attn.v_proj", 32, 64, linear_role::qkv, "model.layers.0.self_attn"),
                 linear("model.layers.0.mlp.gate", 8, 64, linear_role::router, "model.layers.0.mlp.gate"),
                 linear("model.layers.0.mlp.experts.0.up_proj", 40, 64, linear_role::expert, "model.layers.0.mlp.experts"),
                 linear("model.layers.0.mlp.experts.0.down_proj", 64, 40, linear_role::expert, "model.layers.0.mlp.experts"),
                 linear("lm_head", 512, 64, linear_role::lm_head, "lm_head")};
    return s;
  }();
  return spec;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const mixq::recipe r = mixq::parse_recipe(text, "fuzz.yaml");
    const mixq::quant_plan plan = mixq::plan_quantization(r, toy_spec());
    if (plan.linears.size() != toy_spec().linears.size()) __builtin_trap();
    for (const mixq::format_rule& rule : r.rules) (void)mixq::glob_match(rule.pattern, text);
  } catch (const mixq::io_error&) {
  }
  return 0;
}
