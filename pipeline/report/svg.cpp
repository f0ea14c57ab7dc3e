#include "pipeline/report/svg.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

namespace mixq::svg {
namespace {

// Width of text at 12px in a sans-serif face, for layout only.
double text_width(std::string_view s, double size = 12) { return double(s.size()) * size * 0.56; }

std::string tooltip_element(std::string_view tooltip) {
  return tooltip.empty() ? std::string() : fmt::format("<title>{}</title>", escape(tooltip));
}

std::string tick_label(double v, double step) {
  if (v == 0) return "0";
  const double a = std::fabs(v);
  if (a >= 1e5 || a < 1e-3) return fmt::format("{:.0e}", v);
  const int decimals = std::max(0, int(std::ceil(-std::log10(step) - 1e-9)));
  return fmt::format("{:.{}f}", v, decimals);
}

}  // namespace

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

double linear_scale::operator()(double v) const {
  return d1 == d0 ? (r0 + r1) / 2 : r0 + (v - d0) / (d1 - d0) * (r1 - r0);
}

double log_scale::operator()(double v) const {
  const double l0 = std::log10(d0), l1 = std::log10(d1);
  return l1 == l0 ? (r0 + r1) / 2 : r0 + (std::log10(v) - l0) / (l1 - l0) * (r1 - r0);
}

namespace {

double nice_step(double lo, double hi, int count) {
  const double span = hi > lo ? hi - lo : std::max(std::fabs(hi), 1.0);
  const double raw = span / std::max(count, 1);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0})
    if (raw <= m * mag) return m * mag;
  return 10 * mag;
}

}  // namespace

std::vector<tick> nice_ticks(double lo, double hi, int count) {
  const double step = nice_step(lo, hi, count);
  std::vector<tick> out;
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
    const double snapped = std::fabs(v) < step * 1e-9 ? 0.0 : v;
    out.push_back({snapped, tick_label(snapped, step)});
  }
  return out;
}

std::pair<double, double> nice_domain(double lo, double hi, int count) {
  if (hi <= lo) {
    const double pad = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const double step = nice_step(lo, hi, count);
  return {std::floor(lo / step + 1e-9) * step, std::ceil(hi / step - 1e-9) * step};
}

std::vector<tick> decade_ticks(double lo, double hi, int max_count) {
  const int e0 = int(std::floor(std::log10(lo) + 1e-9)), e1 = int(std::ceil(std::log10(hi) - 1e-9));
  const int every = std::max(1, (e1 - e0 + max_count - 1) / std::max(max_count - 1, 1));
  std::vector<tick> out;
  for (int e = e0; e <= e1; e += every) out.push_back({std::pow(10.0, e), e == 0 ? "1" : fmt::format("1e{}", e)});
  return out;
}

canvas::canvas(double width, double height, std::string_view title) : width_(width), height_(height), title_(title) {
  text(12, 22, title, "start", 15, "font-weight=\"600\"");
}

void canvas::rect(double x, double y, double w, double h, std::string_view fill, std::string_view stroke,
                  std::string_view tooltip, std::string_view extra) {
  body_ += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"", x, y,
                       std::max(w, 0.0), std::max(h, 0.0), fill);
  if (!stroke.empty()) body_ += fmt::format(" stroke=\"{}\"", stroke);
  if (!extra.empty()) body_ += fmt::format(" {}", extra);
  close_element("rect", tooltip);
}

void canvas::line(double x1, double y1, double x2, double y2, std::string_view stroke, double width,
                  std::string_view dash) {
  body_ += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" stroke-width=\"{}\"",
                       x1, y1, x2, y2, stroke, width);
  if (!dash.empty()) body_ += fmt::format(" stroke-dasharray=\"{}\"", dash);
  body_ += "/>";
}

void canvas::polyline(const std::vector<std::pair<double, double>>& points, std::string_view stroke, double width) {
  body_ += "<polyline fill=\"none\" stroke-linejoin=\"round\" points=\"";
  for (const auto& [x, y] : points) body_ += fmt::format("{:.1f},{:.1f} ", x, y);
  body_ += fmt::format("\" stroke=\"{}\" stroke-width=\"{}\"/>", stroke, width);
}

void canvas::marker(shape s, double cx, double cy, double size, std::string_view color, std::string_view tooltip) {
  const double r = size / 2;
  std::string el;
  switch (s) {
    case shape::circle:
      el = fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"{:.1f}\" fill=\"{}\"", cx, cy, r, color);
      break;
    case shape::ring:
      el = fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"{:.1f}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"",
                       cx, cy, r, color);
      break;
    case shape::square:
      el = fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"", cx - r, cy - r,
                       size, size, color);
      break;
    case shape::triangle:
      el = fmt::format("<polygon points=\"{:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f}\" fill=\"{}\"", cx, cy - r * 1.15,
                       cx - r * 1.15, cy + r * 0.85, cx + r * 1.15, cy + r * 0.85, color);
      break;
    case shape::diamond:
      el = fmt::format("<polygon points=\"{:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f}\" fill=\"{}\"", cx,
                       cy - r * 1.2, cx + r * 1.2, cy, cx, cy + r * 1.2, cx - r * 1.2, cy, color);
      break;
    case shape::line:
    case shape::dashed_line:
      el = fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" stroke-width=\"2\"{}",
                       cx - r, cy, cx + r, cy, color, s == shape::dashed_line ? " stroke-dasharray=\"5 3\"" : "");
      break;
  }
  const std::string_view tag = s == shape::circle || s == shape::ring ? "circle"
                          : s == shape::square                   ? "rect"
                          : s == shape::line || s == shape::dashed_line ? "line"
                                                                        : "polygon";
  body_ += el;
  close_element(tag, tooltip);
}

void canvas::text(double x, double y, std::string_view content, std::string_view anchor, double size,
                  std::string_view extra) {
  body_ += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"{}\"", x, y, size);
  if (anchor != "start") body_ += fmt::format(" text-anchor=\"{}\"", anchor);
  if (!extra.empty()) body_ += fmt::format(" {}", extra);
  body_ += fmt::format(">{}</text>", escape(content));
}

void canvas::close_element(std::string_view tag, std::string_view tooltip) {
  if (tooltip.empty()) {
    body_ += "/>";
    return;
  }
  body_ += ">";
  body_ += tooltip_element(tooltip);
  body_ += fmt::format("</{}>", tag);
}

void canvas::axes(const frame& f, const std::vector<std::pair<double, std::string>>& x_ticks,
                  const std::vector<std::pair<double, std::string>>& y_ticks, std::string_view x_title,
                  std::string_view y_title) {
  for (const auto& [y, label] : y_ticks) {
    line(f.left, y, f.right(), y, "#e4e4e4");
    line(f.left - 4, y, f.left, y, "#555");
    text(f.left - 7, y + 4, label, "end", 11, "fill=\"#333\"");
  }
  for (const auto& [x, label] : x_ticks) {
    line(x, f.bottom(), x, f.bottom() + 4, "#555");
    text(x, f.bottom() + 17, label, "middle", 11, "fill=\"#333\"");
  }
  line(f.left, f.bottom(), f.right(), f.bottom(), "#555");
  line(f.left, f.top, f.left, f.bottom(), "#555");
  if (!x_title.empty()) text(f.left + f.width / 2, f.bottom() + 36, x_title, "middle", 12, "fill=\"#222\"");
  if (!y_title.empty()) {
    const double x = f.left - 62, y = f.top + f.height / 2;
    text(x, y, y_title, "middle", 12, fmt::format("fill=\"#222\" transform=\"rotate(-90 {:.1f} {:.1f})\"", x, y));
  }
}

double canvas::legend(double x, double y, const std::vector<legend_entry>& entries) {
  const double x0 = x;
  for (const legend_entry& e : entries) {
    const double w = 22 + text_width(e.label) + 16;
    if (x > x0 && x + w > width_ - 8) {
      x = x0;
      y += 18;
    }
    marker(e.mark, x + 7, y - 4, e.mark == shape::line || e.mark == shape::dashed_line ? 16 : 9, e.color);
    text(x + 18, y, e.label, "start", 12, "fill=\"#222\"");
    x += w;
  }
  return y + 18;
}

std::string canvas::str() const {
  return fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {0:.0f} {1:.0f}\" width=\"{0:.0f}\" height=\"{1:.0f}\" "
      "role=\"img\" aria-label=\"{2}\" font-family=\"system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif\">"
      "<title>{2}</title><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>{3}</svg>\n",
      width_, height_, escape(title_), body_);
}

}  // namespace mixq::svg
