// The HDF5 half of calibration_stats.hpp: writing and reading a calibration-statistics file.
//
// Layout, version 1:
//   /                 attributes format = "mixq-calibration-stats", version = 1, sequences, tokens
//                     (int64; strings are fixed-length, null-padded UTF-8 throughout)
//   /fingerprint      group with string attributes model, calibration, data
//   /input_amax       group with 1-D datasets names (strings, sorted) and values (float32)
//   /k_amax, /v_amax  the same
//   /expert_tokens    the same, values int64
// Entry i of names goes with entry i of values. An empty map is two zero-length datasets.
#include "calib/calibration_stats.hpp"

#include "calib/hdf5_support.hpp"

#include <algorithm>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace mixq {

namespace fs = std::filesystem;
using namespace hdf5;  // NOLINT: this file is the HDF5 side of the stats

namespace {

constexpr std::string_view kFormat = "mixq-calibration-stats";
constexpr int64_t kVersion = 1;

void write_contents(const h5_site& site, const fs::path& tmp, const calibration_stats& stats) {
  h5_id file(site.check(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT),
                        fmt::format("cannot create {}", tmp.string())),
             H5Fclose);
  write_string_attribute(site, file.get(), "/", "format", kFormat);
  write_int_attribute(site, file.get(), "version", kVersion);
  write_int_attribute(site, file.get(), "sequences", stats.sequences);
  write_int_attribute(site, file.get(), "tokens", stats.tokens);
  {
    h5_id group(site.check(H5Gcreate2(file.get(), "fingerprint", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                           "cannot create group /fingerprint"),
                H5Gclose);
    write_string_attribute(site, group.get(), "/fingerprint", "model", stats.fingerprint.model);
    write_string_attribute(site, group.get(), "/fingerprint", "calibration", stats.fingerprint.calibration);
    write_string_attribute(site, group.get(), "/fingerprint", "data", stats.fingerprint.data);
  }
  write_map(site, file.get(), "input_amax", stats.input_amax);
  write_map(site, file.get(), "k_amax", stats.k_amax);
  write_map(site, file.get(), "v_amax", stats.v_amax);
  write_map(site, file.get(), "expert_tokens", stats.expert_tokens);
  site.check(file.close(), fmt::format("cannot finish {}", tmp.string()));
}

// ---- reading ----------------------------------------------------------------------------------

}  // namespace

void write_calibration_stats(const fs::path& file, const calibration_stats& stats) {
  const hdf5_quiet quiet;
  const h5_site site{file.string()};
  fs::path tmp = file;
  tmp += ".tmp";
  try {
    write_contents(site, tmp, stats);
    std::error_code ec;
    fs::rename(tmp, file, ec);
    if (ec) site.fail(fmt::format("cannot rename {} into place ({})", tmp.string(), ec.message()));
  } catch (...) {
    std::error_code ignored;  // the original error is the one to report
    fs::remove(tmp, ignored);
    throw;
  }
}

calibration_stats read_calibration_stats(const fs::path& file) {
  const hdf5_quiet quiet;
  const h5_site site{file.string()};
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) site.fail("calibration statistics not found");
  h5_id f(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (f.get() < 0)
    site.fail(fmt::format("not a readable HDF5 file (another format, or truncated or damaged){}", hdf5_reason()));

  const std::string format = read_string_attribute(site, f.get(), "/", "format");
  if (format != kFormat)
    site.fail(fmt::format("not a mixq calibration-statistics file (format '{}', expected '{}')", format, kFormat));
  const int64_t version = read_int_attribute(site, f.get(), "version");
  if (version != kVersion)
    site.fail(fmt::format("calibration-statistics version {}; this build reads version {}", version, kVersion));

  calibration_stats stats;
  stats.sequences = read_int_attribute(site, f.get(), "sequences");
  stats.tokens = read_int_attribute(site, f.get(), "tokens");
  {
    h5_id group = open_group(site, f.get(), "/fingerprint");
    stats.fingerprint.model = read_string_attribute(site, group.get(), "/fingerprint", "model");
    stats.fingerprint.calibration = read_string_attribute(site, group.get(), "/fingerprint", "calibration");
    stats.fingerprint.data = read_string_attribute(site, group.get(), "/fingerprint", "data");
  }
  stats.input_amax = read_map<float>(site, f.get(), "input_amax");
  stats.k_amax = read_map<float>(site, f.get(), "k_amax");
  stats.v_amax = read_map<float>(site, f.get(), "v_amax");
  stats.expert_tokens = read_map<int64_t>(site, f.get(), "expert_tokens");
  return stats;
}

}  // namespace mixq
