// Writing .safetensors files and sharded checkpoints the way Hugging Face does, safely: each file
// is written under a temporary name, fsynced, and renamed into place, so an interrupted write never
// leaves a file that looks complete.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "pipeline/io/safetensors_file.hpp"

namespace mixq {

struct tensor_to_write {
  std::string name;
  dtype type = dtype::f32;
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;  // numel · dtype bits / 8 bytes, little-endian row-major
  // When set, the bytes are made as the tensor is written (called once, in write order; the span
  // it returns must stay valid until the next call), not held all along.
  std::function<std::span<const std::byte>()> produce = {};
};

// The bytes a tensor's shape and dtype take.
uint64_t expected_bytes(const tensor_to_write& t);

// Orders tensors so each starts at a multiple of its element size: wider dtypes first, then by
// name (what the reference writer does; padding between tensors is not allowed).
void sort_for_alignment(std::vector<tensor_to_write>& tensors);

// The header text for tensors laid out in the given order: compact JSON, tensors then
// __metadata__ (if any), padded with spaces to a multiple of 8.
std::string safetensors_header(const std::vector<tensor_to_write>& tensors, const safetensors_metadata& metadata);

// Writes one file, tensors in the given order. Throws io_error naming the file (and tensor).
void write_safetensors(const std::filesystem::path& path, const std::vector<tensor_to_write>& tensors,
                       const safetensors_metadata& metadata = {{"format", "pt"}});

// Writes a checkpoint's tensors into dir: model.safetensors if they fit in max_shard_bytes, else
// model-0000i-of-0000n.safetensors shards (tensors in order, a new shard when the next tensor
// would overflow) plus model.safetensors.index.json whose total_size is the payload sum.
// Returns the files written.
std::vector<std::filesystem::path> write_checkpoint_tensors(const std::filesystem::path& dir,
                                                            const std::vector<tensor_to_write>& tensors,
                                                            uint64_t max_shard_bytes);

}  // namespace mixq
