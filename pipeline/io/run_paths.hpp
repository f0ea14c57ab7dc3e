// Where a run writes, checked against what it reads before any work: replacing --out (--force) or
// clearing the run directory must never delete the source checkpoint, the calibration data, or
// each other.
#pragma once

#include <filesystem>

namespace mixq {

// Whether `inner` is `outer` or lies inside it, symbolic links resolved where the paths exist.
bool path_within(const std::filesystem::path& inner, const std::filesystem::path& outer);

// io_error naming both paths where the export directory `out` holds (or is) the checkpoint or the
// calibration file, where the run directory is the export or lies inside it (the export replaces
// it whole), or where the run directory holds the checkpoint. `calib` and `run_dir` may be empty.
void require_separate_run_paths(const std::filesystem::path& model, const std::filesystem::path& out,
                                const std::filesystem::path& run_dir, const std::filesystem::path& calib);

}  // namespace mixq
