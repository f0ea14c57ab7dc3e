#include "pipeline/cli/progress.hpp"

#include <cstdio>
#include <unistd.h>

#include <fmt/format.h>

namespace mixq::cli {

progress_bar::progress_bar(std::string label, int64_t total, bool quiet)
    : label_(std::move(label)), total_(total), tty_(isatty(fileno(stderr)) != 0), quiet_(quiet),
      start_(std::chrono::steady_clock::now()) {
  update(0);
}

void progress_bar::update(int64_t done) {
  done_ = done;
  if (quiet_ || total_ <= 0) return;
  const double frac = double(done) / double(total_);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) {
    constexpr int kWidth = 30;
    const int filled = int(frac * kWidth);
    fmt::print(stderr, "\r{:<12} [{}{}] {}/{} {:.1f}s", label_, std::string(size_t(filled), '#'),
               std::string(size_t(kWidth - filled), '.'), done, total_, secs);
    std::fflush(stderr);
    return;
  }
  const int quarter = int(frac * 4.0);
  if (quarter == last_quarter_) return;
  last_quarter_ = quarter;
  fmt::print(stderr, "{}: {}/{} ({:.0f}%) {:.1f}s\n", label_, done, total_, 100.0 * frac, secs);
}

progress_bar::~progress_bar() {
  if (!quiet_ && tty_ && total_ > 0) fmt::print(stderr, "\n");
}

}  // namespace mixq::cli
