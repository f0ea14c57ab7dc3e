// A Hugging Face checkpoint directory's tensors: model.safetensors, or the shards listed by
// model.safetensors.index.json (each tensor in exactly the shard the index names).
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "kernels/cpu/source_matrix.hpp"
#include "pipeline/io/safetensors_file.hpp"

namespace mixq {

class checkpoint {
 public:
  static checkpoint open(const std::filesystem::path& dir);

  const std::filesystem::path& dir() const { return dir_; }
  const std::vector<safetensors_file>& shards() const { return shards_; }
  // Every tensor with its shard, in shard order then offset order.
  struct entry {
    const safetensors_file* shard;
    const tensor_info* tensor;
  };
  std::vector<entry> tensors() const;

  // A 2-D BF16 / F16 / F32 tensor as a kernel source, or nullopt (other rank or dtype).
  static std::optional<cpu::source_matrix> as_matrix(const entry& e);
  // The first BF16 / F16 / F32 value that is NaN or infinite, in tensor order, as "tensor 'NAME'
  // (FILE) holds VALUE at flat index I (N such values)"; nullopt when every one is finite. Reads
  // every such tensor: for explaining a non-finite result, not for every run.
  std::optional<std::string> first_nonfinite() const;

 private:
  std::filesystem::path dir_;
  std::vector<safetensors_file> shards_;
};

}  // namespace mixq
