// Progress for long stages on stderr: a redrawn bar on a terminal, a few plain lines otherwise (logs
// of batch jobs stay short). Only one process prints, so MPI ranks other than 0 pass quiet = true.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace mixq::cli {

class progress_bar {
 public:
  progress_bar(std::string label, int64_t total, bool quiet = false);
  void update(int64_t done);
  ~progress_bar();  // ends the bar's line
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;

 private:
  std::string label_;
  int64_t total_, done_ = 0;
  int last_quarter_ = -1;
  bool tty_, quiet_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace mixq::cli
