// Deterministic synthetic weights with the statistics of trained LLM linears: Gaussian bulk,
// Student-t tails, a few input channels much larger than the rest. The built-in tensor set of
// `mixq qerror` and the weight generator `mixq synth` grows from.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mixq {

enum class synth_distribution : uint8_t { normal, heavy_tailed, outlier_channels };

struct synth_weight {
  std::string name;
  int64_t rows = 0, cols = 0;
  std::vector<uint16_t> bf16;  // row-major BF16 bits
};

synth_weight synth_make_weight(std::string name, int64_t rows, int64_t cols, synth_distribution dist, uint64_t seed);

// A small MoE-like layer set (attention, Mamba-style and expert projections of a few shapes).
std::vector<synth_weight> synth_builtin_tensor_set();

}  // namespace mixq
