// A read-only, memory-mapped .safetensors file: every tensor is a zero-copy byte span into the
// mapping. Opening validates the whole header (layout rules of shared/reference/hf-export-format.md
// §1.1); any violation is an io_error that names the file and, where there is one, the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <utility>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "pipeline/io/dtype.hpp"

namespace mixq {

class io_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct tensor_info {
  std::string name;
  dtype type = dtype::f32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range within the data buffer

  int64_t numel() const;
};

inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

// __metadata__ entries in file order (string to string, as the format allows).
using safetensors_metadata = std::vector<std::pair<std::string, std::string>>;

// Parses and validates a header (the JSON text) for a data buffer of data_size bytes.
// `origin` names the file in messages. Tensors come back sorted by offset.
std::vector<tensor_info> parse_safetensors_header(std::string_view header, uint64_t data_size,
                                                  const std::string& origin,
                                                  safetensors_metadata* metadata = nullptr);

class safetensors_file {
 public:
  static safetensors_file open(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const std::vector<tensor_info>& tensors() const { return tensors_; }
  const safetensors_metadata& metadata() const { return metadata_; }
  const tensor_info* find(std::string_view name) const;
  const tensor_info& at(std::string_view name) const;  // io_error naming file and tensor if absent
  std::span<const std::byte> bytes(const tensor_info& t) const;

  struct mapping;  // one per file while any safetensors_file holds it (shared by opens of one file)

 private:
  std::filesystem::path path_;
  std::shared_ptr<mapping> map_;
  const std::byte* data_ = nullptr;  // start of the data buffer
  std::vector<tensor_info> tensors_;
  safetensors_metadata metadata_;
};

}  // namespace mixq
