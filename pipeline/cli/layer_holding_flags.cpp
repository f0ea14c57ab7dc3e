#include "pipeline/cli/commands.hpp"

namespace mixq::cli {

void add_layer_holding_flags(CLI::App& cmd, bool& layer_by_layer, bool& whole_model) {
  auto* one = cmd.add_flag("--layer-by-layer", layer_by_layer,
                           "hold one layer's FP32 weights at a time: calibration and evaluation pass every sequence "
                           "through a layer before the next loads, each layer is quantized as it is needed (the default for fixed "
                           "rules and hessian searches; fisher and kl searches refuse it)");
  auto* all = cmd.add_flag("--whole-model", whole_model,
                           "hold every layer's FP32 weights and every quantized weight from the start (the default "
                           "for fisher and kl searches); the same bytes and perplexities");
  one->excludes(all);
}

std::optional<layer_weights> asked_layer_holding(bool layer_by_layer, bool whole_model) {
  if (layer_by_layer) return layer_weights::on_demand;
  if (whole_model) return layer_weights::all;
  return std::nullopt;
}

}  // namespace mixq::cli
