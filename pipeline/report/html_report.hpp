// `mixq report`: a search record as one self-contained HTML page (inline CSS and SVG, no scripts,
// nothing fetched) and report.json with the figures the page shows.
#pragma once

#include <filesystem>
#include <string>

#include "pipeline/report/search_record.hpp"

namespace mixq {

std::string render_html_report(const search_record& record);

struct report_paths {
  std::filesystem::path html, json;
};

// Reads RUN_DIR/search.json; writes the page to `html_out` (default RUN_DIR/report.html) and the
// figures to report.json beside it.
report_paths write_report(const std::filesystem::path& run_dir, const std::filesystem::path& html_out = {});

}  // namespace mixq
