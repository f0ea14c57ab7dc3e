// The run directory's log of one process: RUN_DIR/logs/rank-R.log (appended, one line per event with
// its time): what the process was asked, its share of the work, each stage's wall time, and the error
// that ended the run. A run across processes leaves one per process, so a failure on one node can be
// read where it happened.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "pipeline/parallel/run_world.hpp"

namespace spdlog {
class logger;
}

namespace mixq {

class run_log {
 public:
  run_log() = default;  // logs nothing
  // Creates RUN_DIR/logs; throws io_error naming the file when it cannot be written.
  run_log(const std::filesystem::path& run_dir, const run_world& world);
  template <class... Args>
  void info(fmt::format_string<Args...> format, Args&&... args) const {
    if (logger_) write(false, fmt::format(format, std::forward<Args>(args)...));
  }
  void error(const std::string& message) const {
    if (logger_) write(true, message);
  }
  const std::filesystem::path& file() const { return file_; }

 private:
  void write(bool error, const std::string& message) const;
  std::shared_ptr<spdlog::logger> logger_;
  std::filesystem::path file_;
};

}  // namespace mixq
