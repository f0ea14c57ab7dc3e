// Two runs' calibration statistics, stored in their run directories, compared field by field (the
// same bits whatever the processes, threads or layers held).
#pragma once

#include <filesystem>

#include <gtest/gtest.h>

#include "calib/calibration_stats.hpp"

namespace mixq::testing {

inline void expect_same_statistics(const std::filesystem::path& a_file, const std::filesystem::path& b_file) {
  const calibration_stats a = read_calibration_stats(a_file), b = read_calibration_stats(b_file);
  EXPECT_EQ(a.input_amax, b.input_amax);
  EXPECT_EQ(a.k_amax, b.k_amax);
  EXPECT_EQ(a.v_amax, b.v_amax);
  EXPECT_EQ(a.expert_tokens, b.expert_tokens);
  EXPECT_EQ(a.tokens, b.tokens);
}

}  // namespace mixq::testing
