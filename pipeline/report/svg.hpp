// A small SVG writer for the report's charts: scales, axes with tick labels, legends, marks. Every
// string that reaches the output goes through escape(), so names from checkpoints cannot break it.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mixq::svg {

// Escapes & < > " ' for both element text and attribute values.
std::string escape(std::string_view text);

// Maps [d0, d1] onto [r0, r1]; log_scale does it in log10 (domain must be positive).
struct linear_scale {
  double d0, d1, r0, r1;
  double operator()(double v) const;
};
struct log_scale {
  double d0, d1, r0, r1;
  double operator()(double v) const;
};

struct tick {
  double value;
  std::string label;
};
// About `count` round ticks (1, 2, 5 x 10^k steps) covering [lo, hi].
std::vector<tick> nice_ticks(double lo, double hi, int count);
// Powers of ten spanning [lo, hi] (both positive), thinned to at most `max_count`.
std::vector<tick> decade_ticks(double lo, double hi, int max_count);
// [lo, hi] widened to the outermost of nice_ticks, so the axis ends on a tick.
std::pair<double, double> nice_domain(double lo, double hi, int count);

// The plotting rectangle inside a canvas.
struct frame {
  double left, top, width, height;
  double right() const { return left + width; }
  double bottom() const { return top + height; }
};

enum class shape { circle, square, triangle, diamond, line, dashed_line, ring };

struct legend_entry {
  std::string label, color;
  shape mark = shape::circle;
};

class canvas {
 public:
  // `title` is drawn at the top and is the figure's accessible name.
  canvas(double width, double height, std::string_view title);

  void rect(double x, double y, double w, double h, std::string_view fill, std::string_view stroke = "",
            std::string_view tooltip = "", std::string_view extra = "");
  void line(double x1, double y1, double x2, double y2, std::string_view stroke, double width = 1,
            std::string_view dash = "");
  void polyline(const std::vector<std::pair<double, double>>& points, std::string_view stroke, double width = 2);
  void marker(shape s, double cx, double cy, double size, std::string_view color, std::string_view tooltip = "");
  // anchor: start | middle | end. `extra` is raw attributes, never user text.
  void text(double x, double y, std::string_view content, std::string_view anchor = "start", double size = 12,
            std::string_view extra = "");

  // A bottom axis and a left axis with tick labels, light grid lines and axis titles.
  void axes(const frame& f, const std::vector<std::pair<double, std::string>>& x_ticks,
            const std::vector<std::pair<double, std::string>>& y_ticks, std::string_view x_title,
            std::string_view y_title);
  // One row of entries from (x, y); returns the y below it.
  double legend(double x, double y, const std::vector<legend_entry>& entries);

  std::string str() const;

 private:
  // Ends an element opened in body_: self-closing, or with a hover tooltip inside.
  void close_element(std::string_view tag, std::string_view tooltip);

  double width_, height_;
  std::string title_;
  std::string body_;
};

}  // namespace mixq::svg
