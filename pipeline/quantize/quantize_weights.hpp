// Quantizes a checkpoint's weights as a plan says, with the scales calibration measured:
//  - fused siblings (q/k/v; gate/up, per expert too) share one weight amax and one input amax, so
//    their weight_scale_2 / weight_scale and input_scale are equal, which the engines require;
//  - a routed expert that saw no calibration token takes the input amax of the same projection in
//    the other experts of its layer (and is listed), instead of an input_scale of nothing;
//  - FP8 KV-cache scales are amax / 448 of post-RoPE K and V (blocks outside the forward pass, like
//    the MTP head, take the largest calibrated ones).
// Weights are read from the mapped checkpoint in their stored dtype; nothing else is loaded.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "calib/calibration_stats.hpp"
#include "kernels/cpu/source_matrix.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/quantized_linear.hpp"
#include "pipeline/model/llama.hpp"  // kv_cache_scales
#include "pipeline/parallel/run_world.hpp"
#include "pipeline/quantize/calibrate.hpp"
#include "pipeline/quantize/weight_device.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {

// The layer of linears outside every layer (lm_head), for apply_fake_quant and quantize_layer.
inline constexpr int64_t outside_layers = -1;

struct quantized_weights {
  std::vector<quantized_linear> linears;          // every linear the plan quantizes, in spec order
  std::map<std::string, kv_cache_scales> kv;      // attention module -> FP8 KV scales; empty without KV quant
  std::vector<std::string> uncalibrated_experts;  // experts with no calibration tokens (input amax borrowed)
  // Attention blocks calibration never ran (the MTP head): their KV scales are the largest of the
  // calibrated blocks', so the engines do not fall back to 1.0.
  std::vector<std::string> uncalibrated_attention;
};


// The input amax each linear's activation scale comes from: the max over its fused siblings (they
// read the same input), or, for a routed expert that saw no calibration token, the max of the same
// projection over its layer's experts.
std::map<std::string, float> input_amax_by_linear(const model_spec& spec, const calibration_stats& stats);

// The weights a plan quantizes, ready to quantize one at a time (what quantize_weights does for
// all of them): the constructor scans each weight for its amax (and NaN / Inf; across the processes
// of `world`, each its share, fused siblings' amax a max over all) and works out the input and KV
// scales; quantize() then gives any one linear's bytes, the same in every process.
class weight_quantizer {
 public:
  // layout: the export's, whose storage of NVFP4 scales the amaxes are fitted to (amax_for_layout).
  weight_quantizer(const checkpoint& ckpt, const model_spec& spec, const quant_plan& plan, kv_cache_format kv,
                   const calibration_stats& stats, weight_device device = weight_device::cpu,
                   const run_world& world = run_world::alone(), export_layout layout = export_layout::modelopt);
  size_t size() const { return todo_.size(); }  // the quantized linears, in spec order
  const linear_spec& linear(size_t k) const { return *todo_.at(k).spec; }
  format_id format(size_t k) const;
  quantized_linear quantize(size_t k) const;
  // Everything but the linears: the KV scales and what was borrowed (quantized_weights' other fields).
  const quantized_weights& scales() const { return scales_; }
  // The linears of one layer (outside_layers: lm_head's), with scales() but only that layer's KV
  // scales: what a model holding that layer alone takes (apply_fake_quant).
  quantized_weights quantize_layer(int64_t layer) const;

 private:
  struct source_weight {
    const linear_spec* spec;
    weight_quant_spec quant;
    cpu::source_matrix matrix;
    float amax = 0.0f;  // shared by the fused siblings
  };
  std::vector<source_weight> todo_;
  std::vector<int64_t> layer_;  // each one's layer (outside_layers for lm_head)
  std::map<std::string, int64_t> kv_layer_;  // attention module -> its layer
  std::map<std::string, float> x_amax_;
  quantized_weights scales_;
  weight_device device_;
  export_layout layout_;
};

// io_error naming the tensor for a weight that is missing, not 2-D BF16 / F16 / F32, or holds
// NaN / Inf. The progress callback counts linears. `device` runs the quantizers (the same result).
// Across the processes of `world`, each scans and quantizes its share of the weights (every
// size()-th), fused siblings' amax is a max over all, and every process's result holds every linear:
// the same bytes whatever the number of processes.
quantized_weights quantize_weights(const checkpoint& ckpt, const model_spec& spec, const quant_plan& plan,
                                   kv_cache_format kv, const calibration_stats& stats,
                                   const progress_callback& progress = {}, weight_device device = weight_device::cpu,
                                   const run_world& world = run_world::alone(),
                                   export_layout layout = export_layout::modelopt);

// Rewrites the in-memory model to compute as the quantized checkpoint will: dequantized weights,
// input fake-quant with the exported input scales, FP8 KV fake-quant. The model must hold the
// layers q names (a model loaded layer by layer takes weight_quantizer::quantize_layer's, as each
// layer loads).
void apply_fake_quant(causal_lm& model, const quantized_weights& q);

}  // namespace mixq
