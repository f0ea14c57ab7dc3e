#include "pipeline/io/safetensors_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace mixq {

int64_t tensor_info::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

using json = nlohmann::ordered_json;  // keeps the header's order (metadata is written back as read)

[[noreturn]] void fail(const std::string& origin, const std::string& what) {
  throw io_error(fmt::format("{}: {}", origin, what));
}

uint64_t checked_offset(const json& v, const std::string& origin, const std::string& name) {
  if (!v.is_number_unsigned()) fail(origin, fmt::format("tensor '{}': data_offsets must be non-negative integers", name));
  return v.get<uint64_t>();
}

tensor_info parse_entry(const std::string& name, const json& e, const std::string& origin) {
  if (!e.is_object()) fail(origin, fmt::format("tensor '{}': entry is not a JSON object", name));
  for (const auto& [key, _] : e.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(origin, fmt::format("tensor '{}': unknown field '{}'", name, key));
  tensor_info t;
  t.name = name;
  const auto dt = e.find("dtype");
  if (dt == e.end() || !dt->is_string()) fail(origin, fmt::format("tensor '{}': missing string field 'dtype'", name));
  const auto parsed = parse_dtype(dt->get<std::string>());
  if (!parsed) fail(origin, fmt::format("tensor '{}': unknown dtype '{}'", name, dt->get<std::string>()));
  t.type = *parsed;

  const auto sh = e.find("shape");
  if (sh == e.end() || !sh->is_array()) fail(origin, fmt::format("tensor '{}': missing array field 'shape'", name));
  uint64_t numel = 1;
  for (const auto& d : *sh) {
    if (!d.is_number_unsigned()) fail(origin, fmt::format("tensor '{}': shape entries must be non-negative integers", name));
    const uint64_t v = d.get<uint64_t>();
    if (__builtin_mul_overflow(numel, v, &numel) || numel > uint64_t(INT64_MAX) / 64)
      fail(origin, fmt::format("tensor '{}': shape {} overflows", name, sh->dump()));
    t.shape.push_back(int64_t(v));
  }

  const auto off = e.find("data_offsets");
  if (off == e.end() || !off->is_array() || off->size() != 2)
    fail(origin, fmt::format("tensor '{}': 'data_offsets' must be [begin, end]", name));
  t.begin = checked_offset((*off)[0], origin, name);
  t.end = checked_offset((*off)[1], origin, name);
  if (t.end < t.begin) fail(origin, fmt::format("tensor '{}': data_offsets end {} < begin {}", name, t.end, t.begin));

  const uint64_t bits = numel * uint64_t(dtype_bits(t.type));  // numel < 2^57: no overflow
  if (bits % 8 != 0) fail(origin, fmt::format("tensor '{}': {} {} values are not a whole number of bytes", name, numel, dtype_name(t.type)));
  if (bits / 8 != t.end - t.begin)
    fail(origin, fmt::format("tensor '{}': shape and dtype {} need {} bytes but data_offsets give {}", name,
                             dtype_name(t.type), bits / 8, t.end - t.begin));
  return t;
}

}  // namespace

std::vector<tensor_info> parse_safetensors_header(std::string_view header, uint64_t data_size, const std::string& origin,
                                                  safetensors_metadata* metadata) {
  if (header.empty() || header.front() != '{') fail(origin, "header does not start with '{'");
  // nlohmann keeps the last of duplicate keys silently; safetensors forbids them, so watch the parse.
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t watch = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && !seen.insert(parsed.get<std::string>()).second && duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  json j;
  try {
    j = json::parse(header.begin(), header.end(), watch);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for numbers too large
    fail(origin, fmt::format("header is not valid JSON ({})", e.what()));
  }
  if (!duplicate.empty()) fail(origin, fmt::format("tensor '{}' appears twice in the header", duplicate));
  if (!j.is_object()) fail(origin, "header is not a JSON object");

  std::vector<tensor_info> tensors;
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) fail(origin, "__metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) fail(origin, fmt::format("__metadata__['{}'] is not a string", k));
        if (metadata) metadata->emplace_back(k, v.get<std::string>());
      }
      continue;
    }
    tensors.push_back(parse_entry(name, entry, origin));
  }
  std::sort(tensors.begin(), tensors.end(), [](const tensor_info& a, const tensor_info& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const auto& t : tensors) {
    if (t.begin < expected) fail(origin, fmt::format("tensor '{}' overlaps the tensor before it (bytes {}..{})", t.name, t.begin, t.end));
    if (t.begin > expected) fail(origin, fmt::format("hole in the data buffer before tensor '{}' (bytes {}..{} unused)", t.name, expected, t.begin));
    expected = t.end;
  }
  if (expected > data_size)
    fail(origin, fmt::format("file is truncated: tensors need {} bytes of data, the file has {}", expected, data_size));
  if (expected < data_size) fail(origin, fmt::format("{} trailing bytes after the last tensor", data_size - expected));
  return tensors;
}

struct safetensors_file::mapping {
  void* addr = nullptr;
  size_t size = 0;
  ~mapping() {
    if (addr && addr != MAP_FAILED) munmap(addr, size);
  }
};

namespace {

// One mapping per file (device, inode, size, modification time) while any safetensors_file holds
// it: a checkpoint opened twice in a process (quantize reads it through the model's loader and its
// own view) then counts its pages once in the resident set, not twice.
struct file_key {
  dev_t dev;
  ino_t ino;
  off_t size;
  int64_t mtime_ns;
  auto operator<=>(const file_key&) const = default;
};
std::mutex open_mappings_mutex;
std::map<file_key, std::weak_ptr<safetensors_file::mapping>> open_mappings;

}  // namespace

safetensors_file safetensors_file::open(const std::filesystem::path& path) {
  const std::string origin = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(origin, fmt::format("cannot open ({})", std::strerror(errno)));
  struct stat st{};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail(origin, fmt::format("cannot stat ({})", std::strerror(errno)));
  }
  if (st.st_size < 8) {
    ::close(fd);
    fail(origin, fmt::format("file is {} bytes, too short for a safetensors header", st.st_size));
  }
  const file_key key{st.st_dev, st.st_ino, st.st_size, int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
  std::shared_ptr<mapping> map;
  {
    const std::lock_guard<std::mutex> lock(open_mappings_mutex);
    std::erase_if(open_mappings, [](const auto& e) { return e.second.expired(); });
    if (const auto it = open_mappings.find(key); it != open_mappings.end()) map = it->second.lock();
    if (!map) {
      map = std::make_shared<mapping>();
      map->size = size_t(st.st_size);
      map->addr = mmap(nullptr, map->size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (map->addr != MAP_FAILED) open_mappings[key] = map;
    }
  }
  ::close(fd);
  if (map->addr == MAP_FAILED) fail(origin, fmt::format("cannot mmap ({})", std::strerror(errno)));

  const auto* base = static_cast<const std::byte*>(map->addr);
  uint64_t n = 0;
  std::memcpy(&n, base, 8);  // little-endian hosts only (x86-64, aarch64)
  if (n > kSafetensorsMaxHeader) fail(origin, fmt::format("header length {} exceeds the 100 MB limit", n));
  if (8 + n > map->size) fail(origin, fmt::format("header length {} runs past the end of the {}-byte file", n, map->size));

  safetensors_file f;
  f.path_ = path;
  f.tensors_ = parse_safetensors_header(std::string_view(reinterpret_cast<const char*>(base) + 8, size_t(n)),
                                        map->size - 8 - n, origin, &f.metadata_);
  f.data_ = base + 8 + n;
  f.map_ = std::move(map);
  return f;
}

const tensor_info* safetensors_file::find(std::string_view name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const tensor_info& safetensors_file::at(std::string_view name) const {
  if (const tensor_info* t = find(name)) return *t;
  throw io_error(fmt::format("{}: no tensor named '{}'", path_.string(), name));
}

std::span<const std::byte> safetensors_file::bytes(const tensor_info& t) const {
  return {data_ + t.begin, size_t(t.end - t.begin)};
}

}  // namespace mixq
