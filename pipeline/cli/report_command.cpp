// mixq report RUN_DIR [--out FILE]: renders the search.json a mixed-precision search left in its run
// directory as one self-contained HTML page, plus report.json with the figures the page shows.
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "pipeline/cli/commands.hpp"
#include "pipeline/report/html_report.hpp"

namespace mixq::cli {
namespace {

constexpr const char* kDescription =
    "Turn a mixed-precision search run into a page a person can read: RUN_DIR/search.json in,\n"
    "RUN_DIR/report.html and RUN_DIR/report.json out. The page is a single file (inline CSS and SVG, no\n"
    "scripts, nothing fetched), so it can be mailed, attached to an issue or opened offline.\n\n"
    "What the page shows:\n"
    "  header       model, method, budget asked and achieved, candidate formats, scoring data, time per stage\n"
    "  sensitivity  every group's score per candidate format on a log axis (the chosen one ringed), and a\n"
    "               table of all scores with each group's weights and chosen format\n"
    "  assignment   the layer stack, one row per layer, each group a cell colored by its format\n"
    "  quality      the optimum score per bit budget with the asked budget marked; measured perplexity\n"
    "               of the searched assignments against uniform and random baselines and the unquantized model\n"
    "  experts      tokens routed to each expert per MoE layer, zero-token experts counted and marked\n"
    "  exclusions   modules left out or kept BF16 and why; formats a group cannot hold and why\n\n"
    "report.json holds the derived numbers (share of weights per format, optimum within the budget,\n"
    "expert coverage, ...) for scripts. A malformed search.json is reported with the JSON path of the\n"
    "offending field, e.g. \"run/search.json: groups[3].scores.fp8 must be a number\".";

constexpr const char* kExamples =
    "Examples:\n"
    "  mixq report runs/stories-5bit                  # writes runs/stories-5bit/report.html and report.json\n"
    "  mixq report runs/stories-5bit --out /tmp/r.html  # report.json goes beside /tmp/r.html";

}  // namespace

void add_report_command(CLI::App& app) {
  struct options {
    std::string run_dir, out;
  };
  auto o = std::make_shared<options>();
  auto* cmd = app.add_subcommand("report", "Render a mixed-precision search run (search.json) as a self-contained "
                                           "HTML report");
  cmd->description(kDescription);
  cmd->footer(kExamples);
  cmd->add_option("RUN_DIR", o->run_dir, "run directory holding search.json")->required();
  cmd->add_option("--out", o->out, "HTML file to write (default RUN_DIR/report.html); report.json goes beside it");
  cmd->callback([o] {
    if (!std::filesystem::is_directory(o->run_dir))
      throw std::runtime_error(fmt::format("{}: run directory not found", o->run_dir));
    const report_paths written = write_report(o->run_dir, o->out);
    fmt::print("wrote {}\nwrote {}\n", written.html.string(), written.json.string());
  });
}

}  // namespace mixq::cli
