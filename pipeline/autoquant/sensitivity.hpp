// Sensitivity of the loss to quantizing each search group in each candidate format
// (shared/reference/autoquantize-numerics.md §1.3-1.4). Three methods:
//   fisher   replay each group's unquantized input with the candidate's quantized weights and inputs,
//            dY = Y_q - Y, g = dL/dY from the backward pass: score = sum over tokens and features of
//            (g * dY)^2, accumulated in double; the rest of the network runs unquantized.
//   hessian  layer-local and forward only: score = sum ||Y_q - Y||^2, which for weight-only
//            quantization is tr(dW H dW^T) with H = sum x x^T of the group's inputs.
//   kl       KL(p || q) of the final next-token distributions with only that group quantized,
//            averaged over tokens (one forward per group, candidate and sequence).
// Routed experts are scored at the MoE block output, as Model Optimizer does: every expert of the
// layer quantized (all its linears and their inputs), dB[t] = sum over t's experts of w * dy_e[t]
// (through fc2_latent_proj where the block has one), score = sum (dL/dB * dB)^2.
// Scores are then made monotone in bits (a format with more bits never scores worse than one with
// fewer); BF16 scores 0. Activation scales come from the calibration statistics, fused siblings share
// their weight and input amax, exactly as the export will quantize them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "calib/calibration_stats.hpp"
#include "pipeline/autoquant/search_groups.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/parallel/run_world.hpp"
#include "pipeline/quantize/calibrate.hpp"

namespace mixq {

struct sensitivity_scores {
  std::vector<std::vector<double>> score;  // [group][candidate], as search_group::candidates
  int64_t sequences = 0, tokens = 0;
};

// The model is left as it was found (kl swaps one group's weights in and out). Across the processes
// of `world`, each scores its share of the sequences (every size()-th) and every process returns
// the scores of all, added in sequence order: the same bits whatever the number of processes and
// threads. The progress callback counts this process's share.
sensitivity_scores score_groups(causal_lm& model, const search_space& space, const calibration_stats& stats,
                                std::span<const std::vector<int32_t>> sequences, score_method method,
                                const progress_callback& progress = {}, const run_world& world = run_world::alone());

// Whether `method` can score a model that holds its layers one at a time (layer_weights::on_demand):
// hessian scores are layer-local; fisher needs the backward pass and kl the final logits. score_groups
// gives such a model the same scores, bit for bit, passing every sequence through a layer at a time.
bool scores_layer_by_layer(score_method method);

// In place: candidates ordered by effective bits, each score at most that of every candidate with
// fewer bits; bf16 (index 0) is 0.
void make_monotone_in_bits(const search_group& g, std::vector<double>& scores);

}  // namespace mixq
