// Perplexity of a token stream (shared/data/tinystories/README.md protocol): non-overlapping
// windows of ctx tokens over the whole stream, a fresh context per window, every token after a
// window's first is predicted; the mean NLL (nats) over the predicted tokens, accumulated in double.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>

#include "pipeline/model/llama.hpp"
#include "pipeline/parallel/run_world.hpp"

namespace mixq {

struct perplexity_result {
  int64_t tokens = 0;     // tokens in the stream
  int64_t windows = 0;    // windows that predicted at least one token
  int64_t predicted = 0;  // tokens predicted
  double mean_nll = 0.0;  // nats per predicted token
  double ppl = 0.0;       // exp(mean_nll)
  double seconds = 0.0;   // wall time of the forward passes
};

// Negative log-likelihood sum (nats, double) of targets[t] under logits[t, V] for t < n.
double nll_sum(const float* logits, const int32_t* targets, int64_t n, int64_t V);

// Called once a layer of a model loaded layer by layer is loaded (to fake-quantize it).
using layer_loaded = std::function<void(causal_lm& model, int64_t layer)>;

// The windows go through the model a layer at a time (run_layer_by_layer), in parallel (OpenMP;
// across the processes of `world`, each takes every size()-th window); the per-window sums are added
// in window order, so the result does not depend on the thread or process count, nor on whether
// the model holds every layer. ctx must be in 2..max_positions.
// Any causal_lm: llama_model, nemotron_h_model.
perplexity_result evaluate_perplexity(causal_lm& model, std::span<const int32_t> tokens, int64_t ctx,
                                      const run_world& world = run_world::alone(), const layer_loaded& loaded = {});

// Why the checkpoint at model_dir evaluates to a perplexity of `ppl` (NaN or infinite) before any
// quantization: its first non-finite tensor (checkpoint::first_nonfinite), else a float32 forward
// pass that overflows.
std::string nonfinite_perplexity_message(const std::filesystem::path& model_dir, double ppl);

}  // namespace mixq
