#include "pipeline/io/checkpoint.hpp"

#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace mixq {

checkpoint checkpoint::open(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  checkpoint c;
  c.dir_ = dir;
  if (!fs::is_directory(dir)) throw io_error(fmt::format("{}: not a directory (expected a Hugging Face checkpoint)", dir.string()));
  // (transformers loads model.safetensors where both it and an index are present: so does mixq)
  const fs::path single = dir / "model.safetensors", index = dir / "model.safetensors.index.json";
  if (fs::exists(single)) {
    c.shards_.push_back(safetensors_file::open(single));
  } else if (fs::exists(index)) {
    nlohmann::json j;
    try {
      std::ifstream in(index);
      j = nlohmann::json::parse(in);
    } catch (const std::exception& e) {
      throw io_error(fmt::format("{}: not valid JSON ({})", index.string(), e.what()));
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw io_error(fmt::format("{}: missing object 'weight_map'", index.string()));
    std::map<std::string, std::string> where;  // tensor -> shard file
    std::set<std::string> files;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) throw io_error(fmt::format("{}: weight_map['{}'] is not a file name", index.string(), name));
      where[name] = file.get<std::string>();
      files.insert(file.get<std::string>());
    }
    for (const auto& f : files) c.shards_.push_back(safetensors_file::open(dir / f));
    std::set<std::string> found;
    for (const auto& shard : c.shards_)
      for (const auto& t : shard.tensors()) {
        const auto it = where.find(t.name);
        if (it == where.end())
          throw io_error(fmt::format("{}: tensor '{}' is in {} but not in the index", index.string(), t.name, shard.path().filename().string()));
        if (it->second != shard.path().filename().string())
          throw io_error(fmt::format("{}: tensor '{}' is indexed in {} but stored in {}", index.string(), t.name, it->second,
                                     shard.path().filename().string()));
        found.insert(t.name);
      }
    for (const auto& [name, file] : where)
      if (!found.count(name)) throw io_error(fmt::format("{}: tensor '{}' is indexed in {} but missing there", index.string(), name, file));
  } else {
    throw io_error(fmt::format("{}: no model.safetensors or model.safetensors.index.json", dir.string()));
  }
  return c;
}

std::vector<checkpoint::entry> checkpoint::tensors() const {
  std::vector<entry> out;
  for (const auto& s : shards_)
    for (const auto& t : s.tensors()) out.push_back({&s, &t});
  return out;
}

std::optional<cpu::source_matrix> checkpoint::as_matrix(const entry& e) {
  const tensor_info& t = *e.tensor;
  if (t.shape.size() != 2) return std::nullopt;
  cpu::source_dtype d;
  switch (t.type) {
    case dtype::f32: d = cpu::source_dtype::f32; break;
    case dtype::bf16: d = cpu::source_dtype::bf16; break;
    case dtype::f16: d = cpu::source_dtype::f16; break;
    default: return std::nullopt;
  }
  return cpu::source_matrix{e.shard->bytes(t).data(), d, t.shape[0], t.shape[1], t.name};
}

std::optional<std::string> checkpoint::first_nonfinite() const {
  for (const entry& e : tensors()) {
    const tensor_info& t = *e.tensor;
    // the exponent field all ones, by width: F32 (8 of 32 bits), BF16 (8 of 16), F16 (5 of 16)
    uint32_t width = 0, exponent = 0;
    if (t.type == dtype::f32) width = 4, exponent = 0x7f800000u;
    else if (t.type == dtype::bf16) width = 2, exponent = 0x7f80u;
    else if (t.type == dtype::f16) width = 2, exponent = 0x7c00u;
    else continue;
    const std::span<const std::byte> bytes = e.shard->bytes(t);
    int64_t first = -1, count = 0;
    uint32_t first_bits = 0;
    for (size_t i = 0; i + width <= bytes.size(); i += width) {
      uint32_t bits = 0;
      std::memcpy(&bits, bytes.data() + i, width);
      if ((bits & exponent) != exponent) continue;
      if (count++ == 0) first = int64_t(i / width), first_bits = bits;
    }
    if (count == 0) continue;
    const bool nan = (first_bits & ~exponent & (width == 4 ? 0x7fffffffu : 0x7fffu)) != 0;
    const bool negative = first_bits >> (8 * width - 1);
    return fmt::format("tensor '{}' ({}) holds {} at flat index {} ({} non-finite value{})", t.name,
                       e.shard->path().filename().string(), nan ? "NaN" : negative ? "-inf" : "+inf", first, count,
                       count == 1 ? "" : "s");
  }
  return std::nullopt;
}

}  // namespace mixq
