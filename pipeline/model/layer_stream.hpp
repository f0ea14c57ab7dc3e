// Many sequences through a model a layer at a time. For a model loaded with layer_weights::on_demand,
// each sequence's residual stream [T, H] is kept between layers: a layer's weights are loaded, every
// sequence passes through it (OpenMP, a sequence per thread), and it is dropped before the next one
// loads. A model that holds every layer runs each sequence through all of them in turn (a forward()
// per thread). Each sequence's numbers are those of forward() called from an OpenMP thread (the same
// functions in the same order; Eigen's GEMM blocks differently where it may start threads of its
// own), whether the model holds its layers or not.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "pipeline/model/llama.hpp"

namespace mixq {

struct layer_pass {
  // The hooks sequence i runs with, made on the thread that runs it (once per layer and once for the
  // head, layer by layer). Empty: no hooks.
  std::function<forward_hooks(int64_t sequence)> hooks;
  // Called once a layer is loaded, before any sequence passes through it (to fake-quantize it); for a
  // model holding every layer, for each layer before the pass.
  std::function<void(causal_lm& model, int64_t layer)> loaded;
  // Each sequence's logits [T, V], from the thread that ran its head (required).
  std::function<void(int64_t sequence, std::vector<float>& logits)> logits;
  // (done, total) steps, from one thread at a time: each layer and the heads (layer by layer), or
  // each sequence (a model holding every layer).
  std::function<void(int64_t done, int64_t total)> progress;
};

// A layer loaded for one pass: loads it unless the model holds it already, and then drops it again
// on every way out (a model holding every layer keeps them).
class layer_loan {
 public:
  layer_loan(causal_lm& model, int64_t layer) : model_(model), layer_(layer), dropping_(!model.holds_layer(layer)) {
    model.load_layer(layer);
  }
  ~layer_loan() {
    if (dropping_) model_.drop_layer(layer_);
  }
  layer_loan(const layer_loan&) = delete;
  layer_loan& operator=(const layer_loan&) = delete;

 private:
  causal_lm& model_;
  int64_t layer_;
  bool dropping_;
};

// Runs every sequence (each checked as forward() checks it) through `model`. An exception from a
// sequence, a hook or a callback stops the pass and is rethrown (the first one); the layers it
// loaded are dropped either way.
void run_layer_by_layer(causal_lm& model, std::span<const std::span<const int32_t>> sequences, const layer_pass& pass);

}  // namespace mixq
