// The first exception thrown in an OpenMP loop, kept and rethrown after it: exceptions must not
// leave an OpenMP region. run() from any thread; failed() lets the other iterations stop early.
#pragma once

#include <exception>
#include <mutex>

namespace mixq {

class first_error {
 public:
  template <class F>
  void run(F&& f) {
    try {
      f();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }
  bool failed() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return error_ != nullptr;
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  mutable std::mutex mutex_;
  std::exception_ptr error_;
};

}  // namespace mixq
