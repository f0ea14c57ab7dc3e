#include "pipeline/report/atomic_file.hpp"

#include <unistd.h>

#include <fstream>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>

namespace mixq {

void write_file_atomically(const std::filesystem::path& path, std::string_view contents) {
  // The pid keeps two writers of the same file from sharing a temporary.
  const std::filesystem::path tmp = fmt::format("{}.tmp.{}", path.string(), ::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(fmt::format("{}: cannot create {}", path.string(), tmp.string()));
    out.write(contents.data(), std::streamsize(contents.size()));
    out.flush();
    if (!out) {
      out.close();
      std::filesystem::remove(tmp);
      throw std::runtime_error(fmt::format("{}: write failed", path.string()));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    throw std::runtime_error(fmt::format("{}: cannot rename into place ({})", path.string(), ec.message()));
  }
}

}  // namespace mixq
