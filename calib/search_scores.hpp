// A search's sensitivity scores and chosen assignment in HDF5 (RUN_DIR/search.h5), beside the
// calibration statistics: one place to load them from (h5py, pandas) for analysis.
//
// Layout, version 1:
//   /              attributes format = "mixq-search-scores", version = 1, method, fingerprint (strings),
//                  budget_bits, effective_bits (float64)
//   /format_bits   names (candidate formats) / values (float64 effective bits)
//   /weights       names (groups) / values (int64 weight counts)
//   /scores/<fmt>  names (groups that can hold <fmt>) / values (float64 scores)
//   /chosen        names (groups) / values (int64: position of the chosen format in /format_bits/names)
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

namespace mixq {

struct search_scores_table {
  std::string method, fingerprint;
  double budget_bits = 0.0, effective_bits = 0.0;
  std::map<std::string, double> format_bits;                    // candidate -> effective bits
  std::map<std::string, int64_t> weights;                       // group -> weights
  std::map<std::string, std::map<std::string, double>> scores;  // format -> group -> score
  std::map<std::string, std::string> chosen;                    // group -> format
};

// Atomic (temporary file, then rename). Throws token_file_error naming the file and object.
void write_search_scores(const std::filesystem::path& file, const search_scores_table& table);
search_scores_table read_search_scores(const std::filesystem::path& file);

}  // namespace mixq
