// How mixq writes numbers (report, command summaries): scores in scientific notation (they span decades), counts with
// thousands separators, bits and perplexities with fixed decimals.
#pragma once

#include <cstdint>
#include <string>

namespace mixq {

std::string score_text(double score);      // 1.20e-03; 0 for zero
std::string count_text(int64_t n);         // 12,288
std::string fixed_text(double v, int decimals);
std::string percent_text(double fraction);  // 61.3%
std::string seconds_text(double seconds);   // 850 ms, 12.3 s, 4 min 05 s
std::string bytes_text(double bytes);       // 512 B, 1.04 MB, 340.68 GB (powers of 1000)

}  // namespace mixq
