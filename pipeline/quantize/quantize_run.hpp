// `mixq quantize` as a function: plan -> calibrate (or reuse the run directory's statistics) ->
// quantize -> export -> verify. Verification evaluates the source model, the fake-quantized model
// and the export re-loaded from disk on the same tokens; an export whose perplexity differs from the
// fake-quantized model's by more than 1e-4 (relative) is an error, not a result.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "calib/calibration_stats.hpp"
#include "pipeline/autoquant/search_run.hpp"
#include "pipeline/export/hf_export.hpp"
#include "pipeline/parallel/run_world.hpp"
#include "pipeline/quantize/weight_device.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {

struct quantize_request {
  std::filesystem::path model, out;
  std::filesystem::path run_dir;      // statistics and summary; empty: "<out>.run"
  recipe rcp;
  std::filesystem::path calib;        // overrides the recipe's calibration data when set
  std::filesystem::path eval_data;    // verification tokens; empty: the calibration sequences
  int64_t eval_ctx = 0;               // 0: the calibration seq_len; above max_position_embeddings an error
  // rcp.calibration.seq_len was asked for explicitly (--seq-len): above max_position_embeddings it is
  // an error; a recipe's own seq_len is capped there instead (recipes are written for many models).
  bool seq_len_explicit = false;
  bool resume = false;                // reuse <run_dir>/calibration.h5 when its fingerprint matches
  bool overwrite = false;             // replace an existing output directory
  bool measure_front = false;         // search: also evaluate the optimum at every feasible report budget
  weight_device device = weight_device::cpu;  // where the weights quantize (the same bytes either way)
  // The layers whose FP32 weights calibration and evaluation hold (held_layers): unset, one at a
  // time unless the recipe searches; the same bytes and perplexities either way.
  std::optional<layer_weights> weights;
  std::string producer_version;
  // (stage, done, total) as each stage advances: "calibrate", "score", "quantize", "evaluate".
  std::function<void(const std::string&, int64_t, int64_t)> progress;
};

// Why a recipe cannot run layer by layer, or "": a search scoring by fisher (a backward pass through
// the whole model) or kl (the final logits of each group swapped in); hessian scores are layer-local.
std::string layer_by_layer_refusal(const recipe& r);
// The layers a run holds: `asked`, else one at a time (on_demand) unless the recipe cannot run that
// way. io_error naming the recipe where on_demand is asked of one that cannot.
layer_weights held_layers(const recipe& r, std::optional<layer_weights> asked);

struct format_usage {
  format_id format;
  std::string stored;                 // the format's name, or the dtype a kept (bf16) linear is copied in
  int64_t linears = 0, parameters = 0;
  double bits = 0.0;                  // parameters x the bits each is stored in
};

struct quantize_report {
  quant_plan plan;
  layer_weights weights = layer_weights::all;  // the layers calibration and evaluation held
  bool searched = false;              // the recipe has `search:`; `search` holds the outcome
  search_outcome search;
  std::filesystem::path run_dir, stats_file;
  bool stats_reused = false;
  int64_t calib_sequences = 0, calib_tokens = 0;
  std::string calib_source;           // file, or "built-in"
  std::vector<std::string> uncalibrated_experts;
  std::vector<std::string> uncalibrated_attention;  // KV scales borrowed (MTP attention)
  std::vector<format_usage> usage;    // one row per format used, bf16 included
  double effective_bits = 0.0;        // over every linear of the model, kept ones at 16 (as budgets count)
  double stored_bits = 0.0;           // the same as stored: kept linears in their source dtype
  uint64_t source_bytes = 0;          // tensor payload of the source checkpoint
  export_summary exported;
  std::string eval_source;
  int64_t eval_tokens = 0;
  double ppl_source = 0.0, ppl_fake_quant = 0.0, ppl_export = 0.0;
  bool ppl_source_reused = false;     // --resume: the source's perplexity stored by an earlier run
  std::vector<std::pair<double, double>> measured_front;  // (effective bits, ppl) with --measure-front
  std::vector<std::pair<std::string, double>> stage_seconds;
  int64_t peak_rss_bytes = 0;
};

// Across the processes of `world` (mpirun / srun), each calibrates, scores, quantizes and evaluates
// its share (data parallel: every process holds the whole model); statistics, scores, weights and
// perplexity sums are combined so that the bytes and figures do not depend on the number of
// processes. The root writes the export (every process verifies it) and the run's records; every
// process returns the same report. A failure on any process stops every one of them with run_failed.
quantize_report run_quantize(const quantize_request& request, const run_world& world = run_world::alone());

// The calibration sequences quantize cuts from `tokens` tokens (samples >= 1): whole windows of
// seq_len from the start, at most `samples`; data shorter than one window is one sequence (0 below 2 tokens).
int64_t calibration_sequence_count(int64_t tokens, int64_t samples, int64_t seq_len);

}  // namespace mixq
