#include "pipeline/quantize/run_log.hpp"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include "pipeline/io/safetensors_file.hpp"  // io_error

namespace mixq {

run_log::run_log(const std::filesystem::path& run_dir, const run_world& world)
    : file_(run_dir / "logs" / fmt::format("rank-{}.log", world.rank())) {
  try {
    std::filesystem::create_directories(file_.parent_path());
    logger_ = std::make_shared<spdlog::logger>(
        "mixq", std::make_shared<spdlog::sinks::basic_file_sink_st>(file_.string(), /*truncate=*/false));
  } catch (const std::exception& e) {
    throw io_error(fmt::format("{}: cannot write the run log: {}", file_.string(), e.what()));
  }
  logger_->set_pattern("%Y-%m-%d %H:%M:%S.%e %l %v");
  logger_->flush_on(spdlog::level::info);
}

void run_log::write(bool error, const std::string& message) const {
  logger_->log(error ? spdlog::level::err : spdlog::level::info, message);
}

}  // namespace mixq
