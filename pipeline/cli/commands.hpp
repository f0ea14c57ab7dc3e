// The mixq subcommands: each file registers one on the CLI11 app and runs it.
#pragma once

#include <optional>

#include <CLI/CLI.hpp>

#include "pipeline/model/layer_weights.hpp"

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

}  // namespace mixq::cli
