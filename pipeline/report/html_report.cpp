#include "pipeline/report/html_report.hpp"

#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pipeline/report/atomic_file.hpp"
#include "pipeline/report/number_text.hpp"
#include "pipeline/report/report_charts.hpp"
#include "pipeline/report/report_figures.hpp"
#include "pipeline/report/svg.hpp"

namespace mixq {
namespace {

using svg::escape;

constexpr const char* kStyle = R"(
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1a1a1a;
       background: #fafafa; margin: 0 auto; max-width: 1060px; padding: 16px 24px 48px; line-height: 1.4; }
h1 { font-size: 22px; margin: 8px 0 4px; }
h2 { font-size: 17px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
p.note { color: #555; font-size: 13px; margin: 4px 0 10px; }
figure { margin: 10px 0; background: #fff; border: 1px solid #e2e2e2; border-radius: 4px; overflow-x: auto; }
svg { display: block; max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 13px; background: #fff; margin: 6px 0; }
th, td { border: 1px solid #e2e2e2; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12px; }
tr:nth-child(even) td { background: #fafbfc; }
td.chosen { font-weight: 600; }
td.muted { color: #999; }
table.summary th { text-align: right; background: #f6f7f9; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.sort { color: #999; font-size: 10px; }
.empty { color: #666; font-style: italic; }
)";

std::string swatch(const std::string& format, const report_figures& f) {
  return fmt::format("<span class=\"swatch\" style=\"background:{}\"></span>{}", format_color(format, f.formats_shown),
                     escape(format));
}

std::string figure(const std::string& svg_markup) { return "<figure>\n" + svg_markup + "</figure>\n"; }

std::string header(const search_record& r, const report_figures& f) {
  std::string h = fmt::format("<h1>Mixed-precision search: {}</h1>\n", escape(r.model));
  h += "<table class=\"summary\">\n";
  const auto row = [&](const std::string& key, const std::string& value_html) {
    h += fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", key, value_html);
  };
  row("model", escape(r.model));
  row("architecture", escape(r.architecture));
  row("sensitivity method", escape(r.method));
  row("budget", fmt::format("{} bits asked, {} achieved ({}; disabled ones as bf16)", fixed_text(r.budget_bits, 3),
                            fixed_text(r.effective_bits, 3),
                            r.cost == "active_moe" ? "over the weights active per token: routed experts count top_k "
                                                     "/ experts of their bits"
                                                   : "over every quantizable linear"));
  std::string formats;
  for (const std::string& format : r.formats)
    formats += fmt::format("{}{} ({} bits)", formats.empty() ? "" : ", ", swatch(format, f),
                           fixed_text(r.format_bits.at(format), 2));
  row("candidate formats", formats);
  row("groups", fmt::format("{} ({} weights, {} disabled)", r.groups.size(), count_text(f.total_weights),
                            f.disabled_groups));
  row("scoring data", fmt::format("{} samples, {} tokens", count_text(r.score_samples), count_text(r.score_tokens)));
  std::string times;
  for (const auto& [stage, s] : r.seconds) times += fmt::format("{}: {}, ", escape(stage), seconds_text(s));
  row("time", r.seconds.empty() ? "<span class=\"empty\">not recorded</span>"
                                : times + fmt::format("total {}", seconds_text(f.total_seconds)));
  if (r.reference_ppl) row("unquantized perplexity", fixed_text(*r.reference_ppl, 4));
  std::string shares;
  for (const format_share& s : f.assignment)
    if (s.groups > 0)
      shares += fmt::format("{}{}: {} groups, {} of weights", shares.empty() ? "" : "; ", swatch(s.format, f), s.groups,
                            percent_text(s.weight_share));
  row("assignment", shares);
  h += "</table>\n";
  return h;
}

std::string group_table(const search_record& r, const report_figures& f) {
  std::string t = "<table>\n<tr><th>group <span class=\"sort\">&#9650;&#9660;</span></th><th>kind</th>"
                  "<th>layer <span class=\"sort\">&#9650;</span></th><th>weights</th>";
  for (const std::string& format : r.formats) t += fmt::format("<th>{}</th>", swatch(format, f));
  t += "<th>chosen</th></tr>\n";
  for (size_t i : f.layer_order) {
    const record_group& g = r.groups[i];
    t += fmt::format("<tr><td class=\"name\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
                     escape(g.name), escape(g.kind), g.layer, count_text(g.weights));
    for (const std::string& format : r.formats) {
      const auto it = g.scores.find(format);
      if (it == g.scores.end())
        t += "<td class=\"num muted\">&ndash;</td>";
      else
        t += fmt::format("<td class=\"num{}\">{}</td>", !g.disabled && g.chosen == format ? " chosen" : "",
                         score_text(it->second));
    }
    t += fmt::format("<td>{}{}</td></tr>\n", swatch(stored_format(g), f), g.disabled ? " (disabled)" : "");
  }
  return t + "</table>\n";
}

std::string exclusions(const search_record& r, const report_figures& f) {
  std::string h = "<h2>Excluded and disabled</h2>\n";
  if (r.excluded.empty() && f.disabled_groups == 0) {
    h += "<p class=\"empty\">Every quantizable linear took part in the search.</p>\n";
  } else {
    h += "<table>\n<tr><th>module or group</th><th>status</th><th>why</th></tr>\n";
    std::set<std::string> in_disabled_groups;  // (listed below, with their group)
    for (const record_group& g : r.groups)
      if (g.disabled) in_disabled_groups.insert(g.modules.begin(), g.modules.end());
    for (const excluded_module& e : r.excluded)
      if (!in_disabled_groups.count(e.module))
        h += fmt::format("<tr><td class=\"name\">{}</td><td>excluded</td><td>{}</td></tr>\n", escape(e.module),
                         escape(e.reason));
    for (const record_group& g : r.groups)
      if (g.disabled)
        h += fmt::format("<tr><td class=\"name\">{}</td><td>disabled (kept bf16)</td><td>{}</td></tr>\n", escape(g.name),
                         escape(g.disabled_reason));
    h += "</table>\n";
  }
  h += "<h2>Candidate formats unavailable per group</h2>\n";
  if (f.unavailable.empty()) return h + "<p class=\"empty\">Every group can hold every candidate format.</p>\n";
  h += "<table>\n<tr><th>group</th><th>format</th><th>why not</th></tr>\n";
  for (const unavailable_format& u : f.unavailable)
    h += fmt::format("<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td></tr>\n", escape(u.group), swatch(u.format, f),
                     escape(u.reason));
  return h + "</table>\n";
}

}  // namespace

std::string render_html_report(const search_record& r) {
  const report_figures f = derive_report_figures(r);
  std::string h = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += fmt::format("<title>mixq search report: {}</title>\n<style>{}</style>\n</head>\n<body>\n", escape(r.model), kStyle);
  h += header(r, f);

  h += "<h2>Sensitivity</h2>\n<p class=\"note\">How much each group's output degrades in each candidate format "
       "(lower is better; bf16 is the reference and scores 0). Hover a dot for its group.</p>\n";
  h += figure(sensitivity_chart(r, f));
  h += group_table(r, f);

  h += "<h2>Chosen assignment</h2>\n<p class=\"note\">Rows are layers in forward order; columns are the groups of "
       "each kind. Hover a cell for its group and weight count.</p>\n";
  h += figure(assignment_chart(r, f));

  h += "<h2>Budget and quality</h2>\n";
  const std::string front = front_chart(r, f);
  h += front.empty() ? "<p class=\"empty\">No score/bits front was recorded.</p>\n" : figure(front);
  const std::string ppl = perplexity_chart(r);
  h += ppl.empty() ? "<p class=\"empty\">No perplexity was measured.</p>\n" : figure(ppl);

  if (!f.experts.empty()) {
    int64_t zero = 0;
    for (const expert_layer& l : f.experts) zero += l.zero_token_experts;
    h += fmt::format("<h2>Expert token coverage</h2>\n<p class=\"note\">Calibration tokens routed to each expert. "
                     "{} expert(s) saw no token: their scores rest on no data.</p>\n",
                     zero);
    for (const expert_layer& l : f.experts) h += figure(expert_chart(l));
  }
  h += exclusions(r, f);
  return h + "</body>\n</html>\n";
}

report_paths write_report(const std::filesystem::path& run_dir, const std::filesystem::path& html_out) {
  // A later fixed-rule run into the same directory leaves the search's files (a search with
  // --resume may use its scores again) but its summary.json says the export is not the search's.
  if (std::ifstream f(run_dir / "summary.json"); f) {
    const auto summary = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
    if (summary.is_object() && summary.value("searched", true) == false)
      throw search_record_error(fmt::format(
          "{}: the last run here ({}) used the fixed rules of {}; search.json is an earlier search's and does not "
          "describe that export (run the search again, or give that run its own --run-dir)",
          run_dir.string(), summary.value("out", std::string("?")), summary.value("recipe", std::string("?"))));
  }
  const search_record record = read_search_record(run_dir / "search.json");
  report_paths out;
  out.html = html_out.empty() ? run_dir / "report.html" : html_out;
  out.json = out.html.parent_path() / "report.json";
  if (!out.html.parent_path().empty()) std::filesystem::create_directories(out.html.parent_path());
  write_file_atomically(out.html, render_html_report(record));
  write_file_atomically(out.json, report_figures_to_json(record, derive_report_figures(record)).dump(2) + "\n");
  return out;
}

}  // namespace mixq
