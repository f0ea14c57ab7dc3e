#include "pipeline/io/run_paths.hpp"

#include <fmt/format.h>

#include "pipeline/io/safetensors_file.hpp"

namespace mixq {
namespace fs = std::filesystem;

bool path_within(const fs::path& inner, const fs::path& outer) {
  std::error_code ec;
  const fs::path a = fs::weakly_canonical(fs::absolute(inner), ec), b = fs::weakly_canonical(fs::absolute(outer), ec);
  auto i = a.begin();
  for (const fs::path& part : b) {
    if (part.empty()) continue;  // (a trailing separator)
    if (i == a.end() || *i != part) return false;
    ++i;
  }
  return true;
}

void require_separate_run_paths(const fs::path& model, const fs::path& out, const fs::path& run_dir,
                                const fs::path& calib) {
  const auto refuse = [](const fs::path& a, const std::string& why) {
    return io_error(fmt::format("{}: {}", a.string(), why));
  };
  if (path_within(model, out))
    throw refuse(out, fmt::format("--out {} the source checkpoint {}; replacing it would delete the model: choose "
                                  "another --out", path_within(out, model) ? "is" : "contains", model.string()));
  if (!calib.empty() && path_within(calib, out))
    throw refuse(out, fmt::format("--out contains the calibration data {}; choose another --out", calib.string()));
  if (run_dir.empty()) return;
  if (path_within(run_dir, out))
    throw refuse(run_dir, fmt::format("the run directory {} the export --out {}, which replaces it whole: choose "
                                      "another --run-dir (the default is <out>.run)",
                                      path_within(out, run_dir) ? "is" : "lies inside", out.string()));
  if (path_within(model, run_dir))
    throw refuse(run_dir, fmt::format("the run directory holds the source checkpoint {}; choose another --run-dir",
                                      model.string()));
}

}  // namespace mixq
