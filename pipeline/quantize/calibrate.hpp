// Calibration: the calibration sequences through the unquantized model, with observers on every
// linear's input (amax), on post-RoPE K and V (amax) and on the routed experts (token counts).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "calib/calibration_stats.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/parallel/run_world.hpp"

namespace mixq {

// Called as the calibration advances with (done, total) steps.
using progress_callback = std::function<void(int64_t done, int64_t total)>;

// Every linear and expert of model.spec() gets an entry, zero where nothing was seen. The sequences
// go through the model a layer at a time (run_layer_by_layer: a model loaded layer by layer holds
// one layer's weights at a time), in parallel (OpenMP); amax is a max and counts are sums, so the
// result depends neither on the thread count nor on the order. `progress` is called from one thread
// at a time.
calibration_stats calibrate(causal_lm& model, std::span<const std::vector<int32_t>> sequences,
                            const progress_callback& progress = {});

// The statistics of every process of `world` (each calibrated its share of the sequences) on every
// process: amax by max, counts by sum, so the result is the one a single process gets.
void combine_calibration(calibration_stats& stats, const run_world& world);

// The routed-expert module of a linear ("...experts.3.up_proj" -> "...experts.3"), for linears with
// expert >= 0.
std::string expert_module_of(const linear_spec& l);

}  // namespace mixq
