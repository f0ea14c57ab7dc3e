// The mixq subcommands: each file registers one on the CLI11 app and runs it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "pipeline/model/layer_weights.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq::cli {

void add_formats_command(CLI::App& app);
void add_qerror_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_synth_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_plan_command(CLI::App& app);

// quantize and plan: --layer-by-layer / --whole-model (exclusive), and what they ask for (unset:
// neither, as held_layers picks).
void add_layer_holding_flags(CLI::App& cmd, bool& layer_by_layer, bool& whole_model);
std::optional<layer_weights> asked_layer_holding(bool layer_by_layer, bool whole_model);

// quantize and plan: --samples, --seq-len, --effective-bits and --layout, each overriding the
// recipe's field where given (0 / empty: not given).
struct recipe_overrides {
  int64_t samples = 0, seq_len = 0;
  double effective_bits = 0.0;
  std::string layout;
};
void add_recipe_overrides(CLI::App& cmd, recipe_overrides& o);
// The recipe with the given overrides; std::runtime_error for --effective-bits on fixed rules.
void apply_recipe_overrides(const recipe_overrides& o, recipe& r);

}  // namespace mixq::cli
