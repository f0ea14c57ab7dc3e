// What `mixq quantize` will do to a model under a recipe, from config.json and the recipe alone (and
// the safetensors headers when a checkpoint directory is at hand): no weight is read. The formats
// each linear gets, the size of the export, the share of the work each process takes, and the
// memory each process needs in this runtime (every process holds the whole model in FP32).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <limits>
#include <string>
#include <vector>

#include "formats/format_traits.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/dtype.hpp"
#include "pipeline/model/layer_weights.hpp"
#include "pipeline/model/model_spec.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {

struct format_share {
  format_id format = format_id::bf16;
  std::string stored;  // the format's name; for kept (bf16) linears the source dtype(s) they are copied in
  int64_t linears = 0, parameters = 0;
  uint64_t bytes = 0;  // as exported (BF16: the linears' source bytes, copied unchanged)
};

struct run_plan {
  // the model
  int64_t blocks[4] = {};  // by block_kind: attention, mlp, moe, mamba (main forward pass)
  int64_t mtp_blocks = 0;
  int64_t parameters = 0, active_parameters = 0;
  int64_t linear_parameters = 0;
  uint64_t source_bytes = 0;  // every tensor in its source dtype
  // the recipe
  bool searched = false;
  std::vector<format_share> formats;  // fixed rules: the linears by format, in format_id order
  struct role_share {
    linear_role role;
    std::vector<format_share> formats;  // in format_id order (bytes left 0)
  };
  std::vector<role_share> roles;      // fixed rules: the same by role, in linear_role order
  uint64_t export_bytes = 0;          // fixed rules: the export's tensor payload (exactly, given the
                                      // checkpoint's dtypes)
  uint64_t export_bytes_min = 0, export_bytes_max = 0;  // a search: every searched linear at its
                                                        // smallest candidate / all kept BF16
  uint64_t export_bytes_budget = 0;   // a search with the weight cost model over 16-bit linears: at most
                                      // this under the budget (0: no such bound)
  double effective_bits = 0.0;        // fixed rules: bits per linear weight, as the search counts them
  double stored_bits = 0.0;           // the same as exported: kept linears in their source dtype
  int64_t searched_linears = 0;       // a search: linears that take part
  double least_effective_bits = 0.0;  // a search: the least budget it can reach
  std::string refused;                // why `mixq quantize` will refuse the recipe (a budget below that)
  int64_t kv_scales = 0;              // attention modules given FP8 KV-cache scales
  std::vector<std::string> notes;     // linears kept BF16 against their rule, by reason (counted)
  std::vector<std::string> warnings;  // rules that match nothing
  // the processes
  int processes = 1, threads = 1;
  int64_t calibration_sequences = 0, sequences_per_process = 0, seq_len = 0;
  bool sequences_known = false;  // from the data's length (else at most the recipe's samples)
  int64_t quantized_linears = 0, linears_per_process = 0;  // a search: the linears it may quantize
  // memory per process
  uint64_t fp32_model_bytes = 0;  // the model's working copy (the MTP head, not run, is not loaded)
  // Layer by layer (held_layers: fixed rules, unless asked otherwise): the working copy holds the
  // embeddings, final norm, lm_head and one layer (the largest), and every sequence's residual
  // stream between layers.
  bool layer_by_layer = false;
  uint64_t residual_stream_bytes = 0;
  uint64_t logits_bytes = 0;      // evaluation: a window's logits (seq_len x vocab, F32) per thread
  uint64_t quantized_layer_bytes = 0;  // the most one layer's take (all that layer by layer holds)
  uint64_t quantized_bytes = 0;   // the quantized weights every process ends up holding (a search:
                                  // at most, each linear in its largest quantized candidate)
  uint64_t scoring_bytes = 0;     // a search: every searched linear stored in each quantized candidate
                                  // (layer by layer: one layer's, the largest)
  uint64_t scoring_layer_bytes = 0;  // the most one layer's candidates take
  // A search: what scoring holds besides the candidates. Fisher: per thread, every linear's input
  // and output gradient over a sequence (routed experts: their share of the tokens), as much again
  // for what the backward pass saves (an estimate: attention and scan states vary by architecture),
  // and the largest linear dequantized; hessian: a forward pass's inputs and outputs; KL: the
  // reference logits of the process's sequences, a pass per thread, a group swapped in as F32.
  uint64_t scoring_activation_bytes = 0;
  // Arithmetic per process, in floating-point operations (a multiply-add is 2): the linears' GEMMs
  // (routed experts at their share of the tokens), attention's scores and sums, and the Mamba
  // state updates. Calibration is one forward pass over the process's sequences; evaluation three
  // (source, fake-quantized, re-loaded export; over the calibration sequences, the default);
  // scoring, for fisher a forward and a backward pass (3x), for hessian a forward pass, each plus
  // two GEMMs per group and candidate, and for kl a forward pass per group and candidate.
  double calibrate_flops = 0.0, score_flops = 0.0, evaluate_flops = 0.0;
  // The resident peak: the larger of scoring (model + candidates + activations + mapped source)
  // and export verification (the re-loaded model + the quantized weights + the source and the
  // staged export, both memory-mapped). The process itself comes on top.
  uint64_t peak_bytes = 0;
  // Of the peak, what the process holds itself (the working copy, quantized weights, scoring): the
  // mapped files' pages are the kernel's to evict and read again, so this is what must fit.
  uint64_t held_bytes = 0;
};

// A tensor's source dtype by name: from the checkpoint's headers, or from config.json alone.
using dtype_lookup = std::function<dtype(const std::string& name)>;

// Without the headers: config.json's torch_dtype for every tensor but the routers' score-correction
// biases, which the releases store in F32.
dtype_lookup config_dtypes(const model_spec& spec, dtype torch_dtype);

// The dtypes a checkpoint stores, by the spec's names (a tensor stored under an alias too);
// `fallback` for any it does not hold. io_error, as quantize gives it, where the checkpoint
// contradicts the spec (a tensor missing, unexpected or of another shape).
dtype_lookup checkpoint_dtypes(const checkpoint& source, const model_spec& spec, dtype fallback);

// Where the run will go.
struct plan_setup {
  int processes = 1;
  int threads = 1;                                          // per process (OMP_NUM_THREADS)
  int64_t max_positions = std::numeric_limits<int64_t>::max();  // caps seq_len, as quantize does
  int64_t calibration_tokens = -1;  // the calibration data's length; -1: unknown (the recipe's samples)
  std::optional<layer_weights> weights = std::nullopt;  // as quantize_request::weights (unset: as quantize picks)
};

// The plan. Throws io_error for a recipe the model cannot take (as quantize would: fused siblings
// given different formats).
run_plan make_run_plan(const model_spec& spec, const recipe& r, const dtype_lookup& source_dtype,
                       const plan_setup& setup = {});

// This machine's GEMM rate in FLOP/s as the runtime multiplies: each of `threads` threads on its own
// ([256, 1024] x [1024, 1024]^T in F32, a window of tokens through a linear), over ~0.2 s. The
// plan's arithmetic divided by it estimates a run's compute time here.
double gemm_rate(int threads);

// This machine's MemAvailable (/proc/meminfo), or 0 where it cannot be read.
uint64_t host_available_memory();
// This process's resident bytes now (/proc/self/statm), or 0: what a run adds its peak to.
uint64_t process_resident_memory();

// A warning where `processes_here` processes' held bytes exceed `available` bytes, else empty.
std::string memory_warning(const run_plan& p, int processes_here, uint64_t available);

}  // namespace mixq
