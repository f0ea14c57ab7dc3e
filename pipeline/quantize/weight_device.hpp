// Where `mixq quantize` quantizes weights: the CPU kernels, or the CUDA kernels when mixq was built
// with them and a GPU is present. Both return the same bytes (each is bit-identical to the reference
// in formats/), so the choice changes the time taken, never the checkpoint.
#pragma once

#include <string>
#include <string_view>

#include "formats/fp8.hpp"
#include "formats/nvfp4.hpp"
#include "kernels/cpu/source_matrix.hpp"

namespace mixq {

enum class weight_device { cpu, cuda };

// "cpu", "cuda" or "auto" (cuda where it can run, else cpu). "cuda" where it cannot run is an
// std::invalid_argument saying why (not built with CUDA, or no GPU found).
weight_device resolve_weight_device(std::string_view name);

// "cpu", or "cuda (<GPU name>)".
std::string describe(weight_device device);

nvfp4_weight nvfp4_quantize_on(weight_device device, const cpu::source_matrix& w, const nvfp4_options& options);
fp8_weight fp8_quantize_on(weight_device device, const cpu::source_matrix& w, const fp8_options& options);

}  // namespace mixq
