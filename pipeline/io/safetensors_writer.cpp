#include "pipeline/io/safetensors_writer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace mixq {
namespace {

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw io_error(fmt::format("{}: {}", path.string(), what));
}

uint64_t numel_of(const tensor_to_write& t) {
  uint64_t numel = 1;
  for (int64_t d : t.shape) numel *= uint64_t(d);
  return numel;
}


// A JSON string literal (names may hold any UTF-8; nlohmann escapes what JSON requires).
std::string quoted(const std::string& s) { return nlohmann::json(s).dump(); }

void write_all(int fd, const void* data, size_t n, const std::filesystem::path& path) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(path, fmt::format("write failed ({})", std::strerror(errno)));
    }
    p += w;
    n -= size_t(w);
  }
}

}  // namespace

uint64_t expected_bytes(const tensor_to_write& t) { return numel_of(t) * uint64_t(dtype_bits(t.type)) / 8; }

namespace {

// Writes bytes produced by `emit` to path atomically (tmp file, fsync, rename, fsync of the dir).
template <class Emit>
void write_atomically(const std::filesystem::path& path, Emit emit) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, fmt::format("cannot create {} ({})", tmp.filename().string(), std::strerror(errno)));
  try {
    emit([&](const void* data, size_t n) { write_all(fd, data, n, path); });
    if (::fsync(fd) != 0) fail(path, fmt::format("fsync failed ({})", std::strerror(errno)));
  } catch (...) {
    ::close(fd);
    std::filesystem::remove(tmp);
    throw;
  }
  if (::close(fd) != 0) {
    std::filesystem::remove(tmp);
    fail(path, fmt::format("close failed ({})", std::strerror(errno)));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp);
    fail(path, fmt::format("cannot rename into place ({})", ec.message()));
  }
  const int dir = ::open(path.parent_path().empty() ? "." : path.parent_path().c_str(), O_RDONLY | O_DIRECTORY);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

}  // namespace

void sort_for_alignment(std::vector<tensor_to_write>& tensors) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const tensor_to_write& a, const tensor_to_write& b) {
    const int wa = dtype_bits(a.type), wb = dtype_bits(b.type);
    return wa != wb ? wa > wb : a.name < b.name;
  });
}

std::string safetensors_header(const std::vector<tensor_to_write>& tensors, const safetensors_metadata& metadata) {
  std::string h = "{";
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const uint64_t end = offset + expected_bytes(t);
    if (h.size() > 1) h += ',';
    h += fmt::format("{}:{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", quoted(t.name), dtype_name(t.type),
                     fmt::join(t.shape, ","), offset, end);
    offset = end;
  }
  if (!metadata.empty()) {
    if (h.size() > 1) h += ',';
    h += "\"__metadata__\":{";
    for (size_t i = 0; i < metadata.size(); ++i)
      h += fmt::format("{}{}:{}", i ? "," : "", quoted(metadata[i].first), quoted(metadata[i].second));
    h += '}';
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<tensor_to_write>& tensors,
                       const safetensors_metadata& metadata) {
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") fail(path, fmt::format("invalid tensor name '{}'", t.name));
    if (!names.insert(t.name).second) fail(path, fmt::format("tensor '{}' given twice", t.name));
    for (int64_t d : t.shape)
      if (d < 0) fail(path, fmt::format("tensor '{}': negative dimension", t.name));
    if (numel_of(t) * uint64_t(dtype_bits(t.type)) % 8 != 0)
      fail(path, fmt::format("tensor '{}': not a whole number of bytes", t.name));
    if (!t.produce && expected_bytes(t) != t.bytes.size())
      fail(path, fmt::format("tensor '{}': shape and dtype {} need {} bytes, {} given", t.name, dtype_name(t.type),
                             expected_bytes(t), t.bytes.size()));
  }
  const std::string header = safetensors_header(tensors, metadata);
  if (header.size() > kSafetensorsMaxHeader) fail(path, fmt::format("header of {} bytes exceeds the 100 MB limit", header.size()));
  write_atomically(path, [&](auto&& put) {
    const uint64_t n = header.size();
    put(&n, 8);  // little-endian hosts only
    put(header.data(), header.size());
    for (const auto& t : tensors) {
      const std::span<const std::byte> bytes = t.produce ? t.produce() : t.bytes;
      if (bytes.size() != expected_bytes(t))
        fail(path, fmt::format("tensor '{}': shape and dtype {} need {} bytes, {} made", t.name, dtype_name(t.type),
                               expected_bytes(t), bytes.size()));
      put(bytes.data(), bytes.size());
    }
  });
}

std::vector<std::filesystem::path> write_checkpoint_tensors(const std::filesystem::path& dir,
                                                            const std::vector<tensor_to_write>& tensors,
                                                            uint64_t max_shard_bytes) {
  std::vector<std::vector<tensor_to_write>> shards(1);
  uint64_t in_shard = 0, total = 0;
  for (const auto& t : tensors) {
    const uint64_t n = expected_bytes(t);
    if (in_shard > 0 && in_shard + n > max_shard_bytes) shards.emplace_back(), in_shard = 0;
    shards.back().push_back(t);
    in_shard += n;
    total += n;
  }
  std::vector<std::filesystem::path> written;
  if (shards.size() == 1) {
    written.push_back(dir / "model.safetensors");
    write_safetensors(written.back(), shards[0]);
    return written;
  }
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    written.push_back(dir / file);
    write_safetensors(written.back(), shards[i]);
    for (const auto& t : shards[i]) weight_map[t.name] = file;
  }
  const nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  const std::string text = index.dump(2) + "\n";
  written.push_back(dir / "model.safetensors.index.json");
  write_atomically(written.back(), [&](auto&& put) { put(text.data(), text.size()); });
  return written;
}

}  // namespace mixq
