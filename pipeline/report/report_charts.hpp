// The report's figures as inline SVG, each self-contained: title, axes, tick labels and legend.
#pragma once

#include <string>
#include <vector>

#include "pipeline/report/report_figures.hpp"
#include "pipeline/report/search_record.hpp"

namespace mixq {

// One fixed color per format wherever it appears: bf16 grey, fp8 blue, nvfp4 orange, nvfp4_w4a16
// amber; other formats get distinct colors in the order of `formats_shown`.
std::string format_color(const std::string& format, const std::vector<std::string>& formats_shown);

// Groups in layer order x log score, one series per candidate format with a non-zero score.
std::string sensitivity_chart(const search_record& record, const report_figures& figures);
// One row per layer, a column per kind of group; each cell colored by the stored format.
std::string assignment_chart(const search_record& record, const report_figures& figures);
// Optimum score per budget with the asked budget marked. Empty when the record has no front.
std::string front_chart(const search_record& record, const report_figures& figures);
// Measured perplexity per bits: searched points joined, baselines as labeled markers. Empty without points.
std::string perplexity_chart(const search_record& record);
// Tokens per expert of one MoE layer, zero-token experts in red.
std::string expert_chart(const expert_layer& layer);

}  // namespace mixq
