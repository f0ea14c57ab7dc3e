#include "pipeline/report/report_charts.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "pipeline/report/number_text.hpp"
#include "pipeline/report/svg.hpp"

namespace mixq {
namespace {

constexpr const char* kKindOrder[] = {"attention", "mamba", "moe", "dense", "latent", "lm_head", "other"};
constexpr double kWidth = 1000;

size_t kind_rank(const std::string& kind) {
  return size_t(std::find(std::begin(kKindOrder), std::end(kKindOrder), kind) - std::begin(kKindOrder));
}

// Pixel positions for the axes from value ticks.
std::vector<std::pair<double, std::string>> placed(const std::vector<svg::tick>& ticks, auto scale) {
  std::vector<std::pair<double, std::string>> out;
  for (const svg::tick& t : ticks) out.emplace_back(scale(t.value), t.label);
  return out;
}

// Name of a group inside its layer: "self_attn.q_proj" for "model.layers.0.self_attn.q_proj".
std::string name_in_layer(const record_group& g) {
  const std::string marker = fmt::format("layers.{}.", g.layer);
  const size_t at = g.layer >= 0 ? g.name.find(marker) : std::string::npos;
  const std::string own = at == std::string::npos ? g.name : g.name.substr(at + marker.size());
  return g.modules.size() > 1 ? fmt::format("{} +{}", own, g.modules.size() - 1) : own;
}

std::string shorten(const std::string& s, double width_px, double font_px) {
  const auto fits = size_t(std::max(0.0, width_px / (font_px * 0.58)));
  if (s.size() <= fits) return s;
  if (fits < 3) return "";
  // Keep the end: "…q_proj" says more than "self_at…".
  return "\u2026" + s.substr(s.size() - (fits - 1));
}

// Dark text on light fills, white on dark ones.
const char* text_on(const std::string& hex) {
  if (hex.size() != 7) return "#000";
  const auto channel = [&](size_t i) { return std::stoi(hex.substr(i, 2), nullptr, 16); };
  const double luma = 0.299 * channel(1) + 0.587 * channel(3) + 0.114 * channel(5);
  return luma > 150 ? "#1a1a1a" : "#fff";
}

}  // namespace

std::string format_color(const std::string& format, const std::vector<std::string>& formats_shown) {
  static const std::map<std::string, std::string> fixed = {
      {"bf16", "#9e9e9e"},  {"fp8", "#1f6fd1"},   {"nvfp4", "#f07f09"}, {"nvfp4_w4a16", "#ffc20e"},
      {"mxfp4", "#2ca02c"}, {"mxfp8", "#8e5cc4"}, {"nf4", "#8c564b"},
  };
  if (const auto it = fixed.find(format); it != fixed.end()) return it->second;
  static const char* const others[] = {"#d6338a", "#17a2b8", "#a8a81c", "#c62828", "#4e5d94", "#6d8b3d"};
  size_t n = 0;
  for (const std::string& f : formats_shown) {
    if (f == format) break;
    n += !fixed.contains(f);
  }
  return others[n % std::size(others)];
}

std::string sensitivity_chart(const search_record& r, const report_figures& f) {
  std::vector<std::string> series;
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (const std::string& format : r.formats) {
    bool any = false;
    for (const record_group& g : r.groups)
      if (const auto it = g.scores.find(format); it != g.scores.end() && it->second > 0) {
        any = true;
        lo = std::min(lo, it->second);
        hi = std::max(hi, it->second);
      }
    // BF16 is the reference (score 0): nothing to draw on a log axis.
    if (any && format != "bf16") series.push_back(format);
  }
  const double height = 380;
  svg::canvas c(kWidth, height, fmt::format("Sensitivity per group and format ({} score, log scale)", r.method));
  std::vector<svg::legend_entry> legend;
  for (const std::string& format : series) legend.push_back({format, format_color(format, f.formats_shown)});
  legend.push_back({"chosen format", "#111", svg::shape::ring});
  const double top = c.legend(14, 46, legend) + 6;
  const svg::frame fr{88, top, kWidth - 100, height - top - 52};
  if (series.empty()) {
    c.text(fr.left + fr.width / 2, fr.top + fr.height / 2, "no positive scores to draw", "middle", 13, "fill=\"#666\"");
    return c.str();
  }
  const std::vector<svg::tick> yt = svg::decade_ticks(lo, hi, 8);
  const svg::log_scale y{yt.front().value, yt.back().value, fr.bottom(), fr.top};
  const size_t n = f.layer_order.size();
  const double slot = fr.width / double(std::max<size_t>(n, 1));
  const auto x_of = [&](size_t i) { return fr.left + (double(i) + 0.5) * slot; };

  // Alternating bands mark the layers; a tick labels each layer's first group.
  std::vector<std::pair<double, std::string>> xt;
  size_t band_start = 0, bands = 0;
  const size_t layers = [&] {
    std::set<int64_t> distinct;
    for (const record_group& g : r.groups) distinct.insert(g.layer);
    return distinct.size();
  }();
  const size_t label_every = std::max<size_t>(1, layers / 30 + 1);
  for (size_t i = 0; i <= n; ++i) {
    if (i < n && i > 0 && r.groups[f.layer_order[i]].layer == r.groups[f.layer_order[i - 1]].layer) continue;
    if (i > 0) {
      const double left = fr.left + double(band_start) * slot, span = double(i - band_start) * slot;
      if (bands % 2 == 1) c.rect(left, fr.top, span, fr.height, "#f3f5f8");
      const record_group& g = r.groups[f.layer_order[band_start]];
      if (bands % label_every == 0)
        xt.emplace_back(left + span / 2, g.layer >= 0 ? std::to_string(g.layer) : shorten(g.kind, 60, 11));
      ++bands;
    }
    band_start = i;
  }
  c.axes(fr, xt, placed(yt, y), "layer (its groups in record order; hover a dot for the group)", "score");

  const double spread = std::min(3.0, slot / double(series.size() + 1));
  const double dot = std::clamp(slot * 0.6, 3.0, 7.0);
  for (size_t i = 0; i < n; ++i) {
    const record_group& g = r.groups[f.layer_order[i]];
    for (size_t s = 0; s < series.size(); ++s) {
      const auto it = g.scores.find(series[s]);
      if (it == g.scores.end() || it->second <= 0) continue;
      const double cx = x_of(i) + (double(s) - double(series.size() - 1) / 2) * spread, cy = y(it->second);
      c.marker(svg::shape::circle, cx, cy, dot, format_color(series[s], f.formats_shown),
               fmt::format("{}: {} {}", g.name, series[s], score_text(it->second)));
      if (!g.disabled && g.chosen == series[s]) c.marker(svg::shape::ring, cx, cy, dot + 5, "#111");
    }
  }
  return c.str();
}

std::string assignment_chart(const search_record& r, const report_figures& f) {
  // Columns: (kind, name in layer), kinds in a fixed order so attention sits left of dense everywhere.
  using column = std::pair<size_t, std::string>;
  std::vector<column> columns;
  std::vector<std::string> rows;  // "layer N", or the kind for groups outside the stack
  std::map<std::pair<std::string, column>, size_t> cell;  // (row, column) -> group index
  for (size_t i : f.layer_order) {
    const record_group& g = r.groups[i];
    const column col{kind_rank(g.kind), name_in_layer(g)};
    if (std::find(columns.begin(), columns.end(), col) == columns.end()) columns.push_back(col);
    const std::string row = g.layer >= 0 ? fmt::format("layer {}", g.layer) : g.kind;
    if (std::find(rows.begin(), rows.end(), row) == rows.end()) rows.push_back(row);
    cell.emplace(std::make_pair(row, col), i);
  }
  std::stable_sort(columns.begin(), columns.end(), [](const column& a, const column& b) { return a.first < b.first; });

  const double label_w = 86, min_cell = 8, max_cell = 130;
  const double width = std::max(kWidth, label_w + 30 + double(columns.size()) * min_cell);
  const double cell_w = std::clamp((width - label_w - 30) / double(std::max<size_t>(columns.size(), 1)), min_cell, max_cell);
  const double row_h = rows.size() > 60 ? 11 : 20;

  std::vector<svg::legend_entry> legend;
  for (const format_share& s : f.assignment)
    if (s.groups > 0)
      legend.push_back({fmt::format("{} ({} bits): {} group{}, {} of weights", s.format, fixed_text(s.bits, 2), s.groups,
                                    s.groups == 1 ? "" : "s",
                                    percent_text(s.weight_share)),
                        format_color(s.format, f.formats_shown), svg::shape::square});
  if (f.disabled_groups > 0) legend.push_back({"disabled (kept bf16)", "#c62828", svg::shape::dashed_line});

  // Measure the legend on a scratch canvas to size the real one.
  svg::canvas probe(width, 100, "");
  const double legend_bottom = probe.legend(14, 46, legend);
  const double header_top = legend_bottom + 8;
  const bool sublabels = cell_w >= 34;
  const double grid_top = header_top + (sublabels ? 38 : 22);
  const double height = grid_top + double(rows.size()) * row_h + 16;

  svg::canvas c(width, height,
                fmt::format("Chosen format per group ({:.2f} effective bits, budget {:.2f})", r.effective_bits,
                            r.budget_bits));
  c.legend(14, 46, legend);
  const double x0 = label_w;
  // Kind headers spanning their columns, then each column's name.
  for (size_t a = 0; a < columns.size();) {
    size_t b = a;
    while (b < columns.size() && columns[b].first == columns[a].first) ++b;
    const double left = x0 + double(a) * cell_w, span = double(b - a) * cell_w;
    const std::string kind = columns[a].first < std::size(kKindOrder) ? kKindOrder[columns[a].first] : "other";
    c.text(left + span / 2, header_top + 10, shorten(kind, span - 4, 12), "middle", 12, "font-weight=\"600\" fill=\"#222\"");
    c.line(left + 2, header_top + 15, left + span - 2, header_top + 15, "#888");
    if (sublabels)
      for (size_t k = a; k < b; ++k)
        c.text(x0 + (double(k) + 0.5) * cell_w, header_top + 31, shorten(columns[k].second, cell_w - 4, 10.5), "middle",
               10.5, "fill=\"#444\"");
    a = b;
  }
  for (size_t ri = 0; ri < rows.size(); ++ri) {
    const double y = grid_top + double(ri) * row_h;
    if (rows.size() <= 60 || ri % 5 == 0) c.text(x0 - 8, y + row_h * 0.72, rows[ri], "end", row_h > 12 ? 12 : 10, "fill=\"#333\"");
    for (size_t k = 0; k < columns.size(); ++k) {
      const auto it = cell.find({rows[ri], columns[k]});
      if (it == cell.end()) continue;
      const record_group& g = r.groups[it->second];
      const std::string format = stored_format(g);
      const std::string color = format_color(format, f.formats_shown);
      std::string tip = fmt::format("{}\n{} ({} weights)", g.name, format, count_text(g.weights));
      if (g.disabled) tip += "\ndisabled: " + g.disabled_reason;
      const double x = x0 + double(k) * cell_w;
      c.rect(x + 1, y + 1, cell_w - 2, row_h - 2, color, g.disabled ? "#c62828" : "#fff", tip,
             g.disabled ? "stroke-width=\"1.5\" stroke-dasharray=\"3 2\"" : "");
      if (cell_w >= 44 && row_h >= 16)
        c.text(x + cell_w / 2, y + row_h * 0.7, shorten(format, cell_w - 6, 11), "middle", 11,
               fmt::format("fill=\"{}\"", text_on(color)));
    }
  }
  return c.str();
}

std::string front_chart(const search_record& r, const report_figures& f) {
  if (r.front.empty()) return "";
  std::vector<record_front_point> pts = r.front;
  std::sort(pts.begin(), pts.end(), [](const record_front_point& a, const record_front_point& b) { return a.bits < b.bits; });
  double x_lo = std::min(pts.front().bits, r.budget_bits), x_hi = std::max(pts.back().bits, r.budget_bits);
  double y_lo = std::numeric_limits<double>::infinity(), y_hi = -y_lo;
  for (const record_front_point& p : pts) {
    y_lo = std::min(y_lo, p.score);
    y_hi = std::max(y_hi, p.score);
  }
  // Log only when every score is positive and they span enough to need it.
  const bool log_y = y_lo > 0 && y_hi / y_lo >= 20;
  const double height = 360;
  svg::canvas c(kWidth, height, fmt::format("Score vs bits: the optimum per budget ({} points)", pts.size()));
  std::vector<svg::legend_entry> legend{{"optimum score per budget", "#2b4c7e", svg::shape::line},
                                        {fmt::format("budget {:.2f} bits", r.budget_bits), "#c62828", svg::shape::dashed_line}};
  if (f.front_at_budget) legend.push_back({"optimum within the budget", "#c62828", svg::shape::ring});
  const double top = c.legend(14, 46, legend) + 6;
  const svg::frame fr{88, top, kWidth - 110, height - top - 52};
  std::tie(x_lo, x_hi) = svg::nice_domain(x_lo, x_hi, 10);
  const std::vector<svg::tick> xt = svg::nice_ticks(x_lo, x_hi, 10);
  const svg::linear_scale x{x_lo, x_hi, fr.left, fr.right()};
  std::function<double(double)> y;
  std::vector<svg::tick> yt;
  if (log_y) {
    yt = svg::decade_ticks(y_lo, y_hi, 8);
    y = svg::log_scale{yt.front().value, yt.back().value, fr.bottom(), fr.top};
  } else {
    const auto [lo, hi] = svg::nice_domain(std::min(0.0, y_lo), y_hi, 6);
    yt = svg::nice_ticks(lo, hi, 6);
    y = svg::linear_scale{lo, hi, fr.bottom(), fr.top};
  }
  c.axes(fr, placed(xt, x), placed(yt, y), "effective bits per weight", log_y ? "score (log)" : "score");
  std::vector<std::pair<double, double>> line;
  for (const record_front_point& p : pts) line.emplace_back(x(p.bits), y(p.score));
  c.polyline(line, "#2b4c7e", 2);
  for (const record_front_point& p : pts)
    c.marker(svg::shape::circle, x(p.bits), y(p.score), 5, "#2b4c7e",
             fmt::format("{:.3f} bits: score {}", p.bits, score_text(p.score)));
  c.line(x(r.budget_bits), fr.top, x(r.budget_bits), fr.bottom(), "#c62828", 1.5, "6 4");
  if (f.front_at_budget) {
    const double px = x(f.front_at_budget->bits), py = y(f.front_at_budget->score);
    c.marker(svg::shape::ring, px, py, 14, "#c62828");
    const bool right_room = px < fr.right() - 230;
    c.text(right_room ? px + 12 : px - 12, py - 10,
           fmt::format("{:.2f} bits, score {}", f.front_at_budget->bits, score_text(f.front_at_budget->score)),
           right_room ? "start" : "end", 12, "fill=\"#c62828\"");
  }
  return c.str();
}

std::string perplexity_chart(const search_record& r) {
  if (r.measured.empty()) return "";
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const measured_point& p : r.measured) {
    x_lo = std::min(x_lo, p.bits);
    x_hi = std::max(x_hi, p.bits);
    y_lo = std::min(y_lo, p.ppl);
    y_hi = std::max(y_hi, p.ppl);
  }
  if (r.reference_ppl) {
    y_lo = std::min(y_lo, *r.reference_ppl);
    y_hi = std::max(y_hi, *r.reference_ppl);
  }
  const auto style = [](const measured_point& p) -> std::pair<svg::shape, const char*> {
    if (p.searched) return {svg::shape::circle, "#2b4c7e"};
    if (p.label.starts_with("uniform")) return {svg::shape::square, "#e8710a"};
    if (p.label.starts_with("random")) return {svg::shape::triangle, "#7b4fb3"};
    return {svg::shape::diamond, "#1b9e77"};
  };
  std::vector<svg::legend_entry> legend;
  const auto add = [&](const std::string& label, const measured_point& p) {
    const auto [mark, color] = style(p);
    if (std::none_of(legend.begin(), legend.end(), [&](const svg::legend_entry& e) { return e.label == label; }))
      legend.push_back({label, color, mark});
  };
  for (const measured_point& p : r.measured)
    add(p.searched ? "searched" : p.label.starts_with("uniform") ? "uniform" : p.label.starts_with("random") ? "random" : "other baseline", p);
  if (r.reference_ppl) legend.push_back({"unquantized", "#555", svg::shape::dashed_line});

  const double height = 380;
  svg::canvas c(kWidth, height, "Measured perplexity vs bits");
  const double top = c.legend(14, 46, legend) + 6;
  const svg::frame fr{88, top, kWidth - 110, height - top - 52};
  std::tie(x_lo, x_hi) = svg::nice_domain(x_lo - 0.25, x_hi + 0.25, 10);
  const std::vector<svg::tick> xt = svg::nice_ticks(x_lo, x_hi, 10);
  const svg::linear_scale x{x_lo, x_hi, fr.left, fr.right()};
  const double pad = std::max((y_hi - y_lo) * 0.08, 0.01);
  const auto [lo, hi] = svg::nice_domain(y_lo - pad, y_hi + pad, 6);
  const svg::linear_scale y{lo, hi, fr.bottom(), fr.top};
  c.axes(fr, placed(xt, x), placed(svg::nice_ticks(lo, hi, 6), y), "effective bits per weight", "perplexity");
  if (r.reference_ppl) {
    const double ry = y(*r.reference_ppl);
    c.line(fr.left, ry, fr.right(), ry, "#555", 1.5, "6 4");
    // Left end: low-bit points sit well above the reference there, high-bit ones crowd it on the right.
    c.text(fr.left + 6, ry - 6, fmt::format("unquantized {:.3f}", *r.reference_ppl), "start", 11, "fill=\"#444\"");
  }
  std::vector<measured_point> searched;
  for (const measured_point& p : r.measured)
    if (p.searched) searched.push_back(p);
  std::sort(searched.begin(), searched.end(), [](const measured_point& a, const measured_point& b) { return a.bits < b.bits; });
  if (searched.size() > 1) {
    std::vector<std::pair<double, double>> line;
    for (const measured_point& p : searched) line.emplace_back(x(p.bits), y(p.ppl));
    c.polyline(line, "#2b4c7e", 2);
  }
  // Baseline labels alternate above and below their marker so neighbours do not collide.
  size_t labeled = 0;
  for (const measured_point& p : r.measured) {
    const auto [mark, color] = style(p);
    const double px = x(p.bits), py = y(p.ppl);
    c.marker(mark, px, py, p.searched ? 7 : 9, color, fmt::format("{}: {:.2f} bits, ppl {:.4f}", p.label, p.bits, p.ppl));
    if (p.searched) continue;
    const bool right_room = px < fr.right() - 180;
    c.text(right_room ? px + 9 : px - 9, py + (labeled++ % 2 == 0 ? -8 : 16), fmt::format("{}: {:.3f}", p.label, p.ppl),
           right_room ? "start" : "end", 11, fmt::format("fill=\"{}\"", color));
  }
  return c.str();
}

std::string expert_chart(const expert_layer& l) {
  const double height = 210;
  svg::canvas c(kWidth, height,
                fmt::format("{}: {} experts, {} with zero tokens ({} tokens routed)", l.label, l.experts.size(),
                            l.zero_token_experts, count_text(l.tokens)));
  double top = 40;
  if (l.zero_token_experts > 0) top = c.legend(14, 46, {{"zero tokens", "#c62828", svg::shape::triangle}}) + 4;
  const svg::frame fr{88, top, kWidth - 100, height - top - 50};
  int64_t most = 1;
  for (const expert_count& e : l.experts) most = std::max(most, e.tokens);
  const auto [lo, hi] = svg::nice_domain(0, double(most), 4);
  const svg::linear_scale y{lo, hi, fr.bottom(), fr.top};
  std::vector<svg::tick> yt = svg::nice_ticks(lo, hi, 4);
  const size_t n = l.experts.size();
  const double slot = fr.width / double(std::max<size_t>(n, 1));
  const size_t label_every = std::max<size_t>(1, size_t(std::ceil(double(n) / 32)));
  std::vector<std::pair<double, std::string>> xt;
  for (size_t i = 0; i < n; i += label_every)
    xt.emplace_back(fr.left + (double(i) + 0.5) * slot, std::to_string(l.experts[i].expert));
  c.axes(fr, xt, placed(yt, y), "expert", "tokens");
  for (size_t i = 0; i < n; ++i) {
    const expert_count& e = l.experts[i];
    const double bx = fr.left + double(i) * slot + slot * 0.15;
    const std::string tip = fmt::format("{}: {} tokens", e.module, count_text(e.tokens));
    if (e.tokens == 0)
      c.marker(svg::shape::triangle, bx + slot * 0.35, fr.bottom() - 6, std::clamp(slot * 0.6, 5.0, 10.0), "#c62828", tip);
    else
      c.rect(bx, y(double(e.tokens)), slot * 0.7, fr.bottom() - y(double(e.tokens)), "#4f7cac", "", tip);
  }
  return c.str();
}

}  // namespace mixq
