// The mixq subcommands: each file registers one on the CLI11 app and runs it.
#pragma once

#include <CLI/CLI.hpp>

namespace mixq::cli {

void add_formats_command(CLI::App& app);
void add_qerror_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_synth_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_plan_command(CLI::App& app);

}  // namespace mixq::cli
