// The pieces of mixq inspect's quantized-export checks, shared by the files that implement them:
// stored_linear.cpp reads one linear in either layout and checks its own scales, export_checks.cpp
// checks what the runtimes require across linears (fused siblings, MoE experts, TP slices, KV
// scales), quant_config_checks.cpp checks the JSON configs against the tensors.
#pragma once

#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/inspect/checkpoint_inspection.hpp"
#include "pipeline/io/checkpoint.hpp"

namespace mixq::inspection {

struct tensor_ref {
  const safetensors_file* file;
  const tensor_info* info;
  std::span<const std::byte> bytes() const { return file->bytes(*info); }
};
using tensor_map = std::map<std::string, tensor_ref>;

// The linear stored as `module` (ModelOpt <m>.weight or compressed-tensors <m>.weight_packed), its
// scales checked into r.problems; nullopt when no weight is stored or it is not a linear format.
std::optional<linear_layer> read_stored_linear(const std::string& module, const tensor_map& tensors,
                                               checkpoint_inspection& r);

// A scale tensor must be F32 and every value finite and positive; a missing one is a problem when required.
void check_scale(const std::string& name, const tensor_map& tensors, bool required, std::vector<std::string>& problems);

// ModelOpt's name for a stored format ("NVFP4", "FP8", ...); "" for the unquantized ones.
std::string modelopt_algo(stored_format f);

void check_fused_groups(const tensor_map& tensors, checkpoint_inspection& r);
void check_moe_experts(checkpoint_inspection& r);
void check_tensor_parallel(checkpoint_inspection& r);
void check_kv_scales(const tensor_map& tensors, checkpoint_inspection& r);  // after the config set kv_cache_quant_algo

// hf_quant_config.json (and config.json's quantization_config, null when absent) against the tensors.
void check_modelopt_config(const nlohmann::json& hf, const nlohmann::json& config_qc, checkpoint_inspection& r);
// config.json's compressed-tensors quantization_config against the tensors.
void check_compressed_tensors_config(const nlohmann::json& qc, checkpoint_inspection& r);

}  // namespace mixq::inspection
