#include "pipeline/plan/run_plan.hpp"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include <unistd.h>

#include <Eigen/Core>
#include <fmt/format.h>

#include "pipeline/autoquant/search_groups.hpp"
#include "pipeline/io/quantized_linear.hpp"
#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/quantize/quantize_run.hpp"
#include "pipeline/report/number_text.hpp"

namespace mixq {
namespace {

uint64_t source_bytes_of(const std::string& name, int64_t numel, const dtype_lookup& source_dtype) {
  return uint64_t(numel) * uint64_t(dtype_bits(source_dtype(name))) / 8;
}

// A linear's bytes in the export: its encoding, or its source tensor copied unchanged (BF16).
uint64_t exported_linear_bytes(const linear_spec& l, format_id f, const dtype_lookup& source_dtype) {
  if (f == format_id::bf16) return source_bytes_of(l.weight_name(), l.numel(), source_dtype);
  const auto bytes = quantized_linear_bytes(f, l.out_features, l.in_features);
  if (!bytes) throw io_error(fmt::format("{}: format {} cannot be exported", l.module, traits_of(f).name));
  return *bytes;
}

int64_t share_of(int64_t items, int processes) { return (items + processes - 1) / processes; }

}  // namespace

dtype_lookup config_dtypes(const model_spec& spec, dtype torch_dtype) {
  auto f32 = std::make_shared<std::set<std::string>>();
  for (const tensor_spec& t : spec.tensors)
    if (t.kind == tensor_kind::router_bias) f32->insert(t.name);
  return [f32, torch_dtype](const std::string& name) { return f32->count(name) ? dtype::f32 : torch_dtype; };
}

dtype_lookup checkpoint_dtypes(const checkpoint& source, const model_spec& spec, dtype fallback) {
  auto stored = std::make_shared<std::map<std::string, dtype>>();
  std::vector<std::pair<std::string, std::vector<int64_t>>> present;
  std::vector<std::string> files;
  for (const checkpoint::entry& e : source.tensors()) {
    (*stored)[e.tensor->name] = e.tensor->type;
    present.emplace_back(e.tensor->name, e.tensor->shape);
    files.push_back(e.shard->path().filename().string());
  }
  const std::vector<std::string> problems = check_against_tensors(spec, present, files);
  if (!problems.empty())
    throw io_error(fmt::format("{}: the checkpoint does not match its config.json: {}{}", source.dir().string(),
                               problems.front(),
                               problems.size() > 1 ? fmt::format(" (and {} more)", problems.size() - 1) : ""));
  for (const tensor_spec& t : spec.tensors)
    for (const std::string& alias : t.aliases)
      if (!stored->count(t.name) && stored->count(alias)) (*stored)[t.name] = stored->at(alias);
  return [stored, fallback](const std::string& name) {
    const auto it = stored->find(name);
    return it != stored->end() ? it->second : fallback;
  };
}

namespace {

// The bytes every plan shares: the non-linear tensors (copied unchanged) and the KV-cache scales.
struct fixed_bytes {
  uint64_t other = 0, linears = 0, kv = 0;
};

// Fixed rules: every linear's format, the export's bytes, the quantized weights.
void plan_rules(run_plan& p, const model_spec& spec, const recipe& r, const dtype_lookup& source_dtype,
                const fixed_bytes& fixed) {
  std::map<int, uint64_t> quantized_by_layer;  // (-1: lm_head)
  const quant_plan plan = plan_quantization(r, spec);
  p.warnings = plan.warnings;
  std::map<format_id, format_share> by_format;
  std::map<linear_role, std::map<format_id, format_share>> by_role;
  std::map<std::string, int64_t> notes;
  double bits = 0.0, stored_bits = 0.0;
  for (size_t i = 0; i < spec.linears.size(); ++i) {
    const linear_spec& l = spec.linears[i];
    const format_id f = plan.linears[i].weight.format;
    std::string stored(f == format_id::bf16 ? dtype_name(source_dtype(l.weight_name())) : traits_of(f).name);
    std::transform(stored.begin(), stored.end(), stored.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    for (format_share* s : {&by_format[f], &by_role[l.role][f]}) {
      s->format = f;
      if (s->stored.empty()) s->stored = stored;
      else if (s->stored != stored && s->stored.find(stored) == std::string::npos) s->stored += "/" + stored;
      ++s->linears;
      s->parameters += l.numel();
    }
    by_format[f].bytes += exported_linear_bytes(l, f, source_dtype);
    bits += traits_of(f).effective_bits * double(l.numel());
    stored_bits += (f == format_id::bf16 ? double(dtype_bits(source_dtype(l.weight_name()))) : traits_of(f).effective_bits) *
                   double(l.numel());
    if (f != format_id::bf16) {
      ++p.quantized_linears;
      const uint64_t bytes = *quantized_linear_bytes(f, l.out_features, l.in_features);
      p.quantized_bytes += bytes;
      quantized_by_layer[l.block >= 0 ? spec.blocks[size_t(l.block)].layer : -1] += bytes;
    }
    if (!plan.linears[i].note.empty()) ++notes[plan.linears[i].note];
  }
  for (const auto& [layer, bytes] : quantized_by_layer) p.quantized_layer_bytes = std::max(p.quantized_layer_bytes, bytes);
  for (auto& [f, s] : by_format) {
    p.formats.push_back(s);
    p.export_bytes += s.bytes;
  }
  for (auto& [role, formats] : by_role) {
    run_plan::role_share rs{role, {}};
    for (auto& [f, s] : formats) rs.formats.push_back(s);
    p.roles.push_back(std::move(rs));
  }
  p.export_bytes += fixed.other + fixed.kv;
  p.effective_bits = p.linear_parameters > 0 ? bits / double(p.linear_parameters) : 0.0;
  p.stored_bits = p.linear_parameters > 0 ? stored_bits / double(p.linear_parameters) : 0.0;
  for (const auto& [note, n] : notes) p.notes.push_back(n > 1 ? fmt::format("{} ({} linears)", note, n) : note);
}

// A search: the export's bounds, the least budget, what scoring holds of the candidates. Returns
// the most weights one searched group holds.
int64_t plan_search(run_plan& p, const model_spec& spec, const recipe& r, const search_space& space,
                    const dtype_lookup& source_dtype, const fixed_bytes& fixed) {
  std::map<int, uint64_t> quantized_by_layer;  // at most (-1: lm_head)
  p.warnings = space.warnings;
  uint64_t smallest = 0;
  int64_t largest_group = 0;
  std::map<int, uint64_t> by_layer;  // scoring's candidates by layer (-1: lm_head)
  for (const search_group& g : space.groups) {
    int64_t weights = 0;
    if (!g.disabled) p.searched_linears += int64_t(g.linears.size());
    for (int i : g.linears) {
      const linear_spec& l = spec.linears[size_t(i)];
      weights += l.numel();
      uint64_t least = exported_linear_bytes(l, format_id::bf16, source_dtype), most_quantized = 0;
      const bool scored = l.block < 0 || !spec.blocks[size_t(l.block)].mtp;  // (MTP linears are not)
      for (const weight_quant_spec& c : g.candidates) {
        if (g.disabled || c.format == format_id::bf16) continue;
        const uint64_t bytes = exported_linear_bytes(l, c.format, source_dtype);
        least = std::min(least, bytes);
        most_quantized = std::max(most_quantized, bytes);
        if (scored) {  // kept as stored; the weight-only formats (MX, NF4) dequantized
          const uint64_t held =
              quantized_linear_bytes(c.format, l.out_features, l.in_features).value_or(uint64_t(l.numel()) * 4);
          p.scoring_bytes += held;
          by_layer[l.block >= 0 ? spec.blocks[size_t(l.block)].layer : -1] += held;
        }
      }
      smallest += least;
      if (most_quantized > 0) {
        ++p.quantized_linears;
        p.quantized_bytes += most_quantized;
        quantized_by_layer[l.block >= 0 ? spec.blocks[size_t(l.block)].layer : -1] += most_quantized;
      }
    }
    if (!g.disabled) largest_group = std::max(largest_group, weights);
  }
  for (const auto& [layer, bytes] : by_layer) p.scoring_layer_bytes = std::max(p.scoring_layer_bytes, bytes);
  for (const auto& [layer, bytes] : quantized_by_layer) p.quantized_layer_bytes = std::max(p.quantized_layer_bytes, bytes);
  p.least_effective_bits = double(least_cost(space, spec, r.search)) / double(cost_per_bit(space, spec, r.search));
  try {
    require_reachable_budget(space, spec, r.search, r.origin);
  } catch (const io_error& e) {
    p.refused = e.what();
  }
  p.export_bytes_min = smallest + fixed.other + fixed.kv;
  p.export_bytes_max = fixed.linears + fixed.other + fixed.kv;
  // The budget counts every linear weight's effective bits (BF16 as 16): it bounds the stored bytes
  // where the kept linears are stored in 16 bits, up to each quantized linear's two F32 scalars.
  bool sixteen_bit = true;
  for (const linear_spec& l : spec.linears) sixteen_bit = sixteen_bit && dtype_bits(source_dtype(l.weight_name())) == 16;
  if (p.refused.empty() && r.search.cost == cost_model::weight && sixteen_bit)
    p.export_bytes_budget =
        std::min(p.export_bytes_max, uint64_t(r.search.effective_bits * double(p.linear_parameters) / 8.0) +
                                         uint64_t(p.quantized_linears) * 2 * sizeof(float) + fixed.other + fixed.kv);
  return largest_group;
}

// What scoring holds besides the candidates (run_plan::scoring_activation_bytes).
uint64_t scoring_activations(const run_plan& p, const model_spec& spec, const recipe& r, int threads,
                             int64_t largest_group) {
  std::map<int, double> per_layer;  // floats a pass records per token: every linear's input and output
  int64_t largest = 0;              // the largest linear's weights, dequantized for a replay
  for (const linear_spec& l : spec.linears) {
    if (l.block >= 0 && spec.blocks[size_t(l.block)].mtp) continue;
    const double share = l.expert < 0 ? 1.0 : double(spec.dims.experts_per_token) / double(spec.dims.experts);
    per_layer[l.block >= 0 ? spec.blocks[size_t(l.block)].layer : -1] += share * double(l.in_features + l.out_features);
    largest = std::max(largest, l.numel());
  }
  double per_token = 0.0;  // a whole pass's, or layer by layer the largest layer's
  for (const auto& [layer, floats] : per_layer) per_token = p.layer_by_layer ? std::max(per_token, floats) : per_token + floats;
  const double T = double(p.seq_len), f = sizeof(float), V = double(spec.dims.vocab);
  const uint64_t n = uint64_t(threads), replay = uint64_t(largest) * 4;
  switch (r.search.method) {
    case score_method::fisher:  // inputs and output gradients, and the backward pass's saved state
      return (uint64_t(2.0 * per_token * T * f) + replay) * n;
    case score_method::hessian:  // inputs and outputs of a forward pass
      return (uint64_t(per_token * T * f) + replay) * n;
    case score_method::kl: {  // every own sequence's reference logits, a forward pass's per thread,
                              // and the largest group swapped into the model in F32
      const int64_t scored = std::min(r.search.score_samples, p.calibration_sequences);
      return uint64_t(double(share_of(scored, p.processes)) * T * V * f) + uint64_t(per_token * T * f + T * V * f) * n +
             uint64_t(largest_group) * 4;
    }
  }
  return 0;
}

// A forward pass's arithmetic per token over a window of T tokens, and each group's linears' (their
// GEMM per token, routed experts at their share).
struct forward_work {
  double per_token = 0.0;
  std::vector<double> group;  // by search group, when given a search space
};

forward_work forward_flops(const model_spec& spec, int64_t T, const search_space* space) {
  const model_dims& d = spec.dims;
  const auto in_mtp = [&](int block) { return block >= 0 && spec.blocks[size_t(block)].mtp; };
  const auto active = [&](const linear_spec& l) {
    return l.expert < 0 ? 1.0 : double(d.experts_per_token) / double(std::max<int64_t>(d.experts, 1));
  };
  forward_work w;
  for (const linear_spec& l : spec.linears)
    if (!in_mtp(l.block)) w.per_token += 2.0 * double(l.numel()) * active(l);
  for (const block_spec& b : spec.blocks) {
    if (b.mtp) continue;
    if (b.kind == block_kind::attention)  // q k^T and p v over T / 2 keys on average (causal)
      w.per_token += 2.0 * 2.0 * double(d.heads * d.head_dim) * double(T) / 2.0;
    else if (b.kind == block_kind::mamba)  // the state's decay, input and read-out
      w.per_token += 2.0 * 3.0 * double(d.mamba_heads * d.mamba_head_dim * d.ssm_state);
  }
  if (space)
    for (const search_group& g : space->groups) {
      double n = 0.0;
      for (int i : g.linears)
        if (!in_mtp(spec.linears[size_t(i)].block)) n += 2.0 * double(spec.linears[size_t(i)].numel()) * active(spec.linears[size_t(i)]);
      w.group.push_back(g.disabled ? 0.0 : n);
    }
  return w;
}

}  // namespace

run_plan make_run_plan(const model_spec& spec, const recipe& r, const dtype_lookup& source_dtype,
                       const plan_setup& setup) {
  run_plan p;
  for (const block_spec& b : spec.blocks) {
    if (b.mtp) ++p.mtp_blocks;
    else ++p.blocks[int(b.kind)];
  }
  p.parameters = parameter_count(spec);
  p.active_parameters = active_parameter_count(spec);
  fixed_bytes fixed;
  for (const tensor_spec& t : spec.tensors) fixed.other += source_bytes_of(t.name, t.numel(), source_dtype);
  for (const linear_spec& l : spec.linears) {
    p.linear_parameters += l.numel();
    fixed.linears += source_bytes_of(l.weight_name(), l.numel(), source_dtype);
    if (l.module.ends_with(".k_proj") && r.kv_cache == kv_cache_format::fp8) ++p.kv_scales;
  }
  p.source_bytes = fixed.other + fixed.linears;
  fixed.kv = uint64_t(p.kv_scales) * 2 * sizeof(float);

  p.searched = r.search.enabled;
  int64_t largest_group = 0;
  std::optional<search_space> space;
  if (p.searched) space = make_search_space(spec, r.search);
  if (p.searched) largest_group = plan_search(p, spec, r, *space, source_dtype, fixed);
  else plan_rules(p, spec, r, source_dtype, fixed);

  p.processes = setup.processes;
  p.threads = setup.threads;
  p.seq_len = std::min(r.calibration.seq_len, setup.max_positions);
  // as quantize cuts the data
  p.calibration_sequences = r.calibration.samples;
  p.sequences_known = setup.calibration_tokens >= 0;
  if (p.sequences_known)
    p.calibration_sequences = calibration_sequence_count(setup.calibration_tokens, r.calibration.samples, p.seq_len);
  // as held_layers decides
  const std::string refusal = layer_by_layer_refusal(r);
  const layer_weights held =
      setup.weights.value_or(refusal.empty() ? layer_weights::on_demand : layer_weights::all);
  p.layer_by_layer = held == layer_weights::on_demand && refusal.empty();
  if (held == layer_weights::on_demand && p.refused.empty()) p.refused = refusal;
  if (p.searched) p.scoring_activation_bytes = scoring_activations(p, spec, r, setup.threads, largest_group);
  if (p.searched && p.layer_by_layer) p.scoring_bytes = p.scoring_layer_bytes;
  p.sequences_per_process = share_of(p.calibration_sequences, p.processes);
  p.linears_per_process = share_of(p.quantized_linears, p.processes);
  int64_t mtp = 0;  // the MTP head is not loaded: it is not part of the forward pass
  const auto in_mtp = [&](int block) { return block >= 0 && spec.blocks[size_t(block)].mtp; };
  for (const linear_spec& l : spec.linears) mtp += in_mtp(l.block) ? l.numel() : 0;
  for (const tensor_spec& t : spec.tensors) mtp += in_mtp(t.block) ? t.numel() : 0;
  p.fp32_model_bytes = uint64_t(p.parameters - mtp) * sizeof(float);
  if (p.layer_by_layer) {  // outside the layers, and the largest layer
    std::map<int64_t, int64_t> by_layer;  // layer (-1: none) -> parameters
    const auto layer_of = [&](int block) { return block >= 0 ? int64_t(spec.blocks[size_t(block)].layer) : -1; };
    for (const linear_spec& l : spec.linears)
      if (!in_mtp(l.block)) by_layer[layer_of(l.block)] += l.numel();
    for (const tensor_spec& t : spec.tensors)
      if (!in_mtp(t.block)) by_layer[layer_of(t.block)] += t.numel();
    int64_t largest = 0;
    for (const auto& [layer, n] : by_layer)
      if (layer >= 0) largest = std::max(largest, n);
    p.fp32_model_bytes = uint64_t(by_layer[-1] + largest) * sizeof(float);
    p.residual_stream_bytes = uint64_t(p.sequences_per_process * p.seq_len * spec.dims.hidden) * sizeof(float);
  }
  const uint64_t exported = !p.searched                 ? p.export_bytes
                            : p.export_bytes_budget > 0 ? p.export_bytes_budget
                                                        : p.export_bytes_max;
  p.logits_bytes = uint64_t(p.threads) * uint64_t(p.seq_len * spec.dims.vocab) * sizeof(float);

  // arithmetic per process
  const forward_work fw = forward_flops(spec, p.seq_len, space ? &*space : nullptr);
  const double tokens = double(p.sequences_per_process * p.seq_len);
  p.calibrate_flops = fw.per_token * tokens;
  p.evaluate_flops = 3.0 * fw.per_token * tokens;
  if (space) {
    const double scored = double(share_of(std::min(r.search.score_samples, p.calibration_sequences), p.processes) *
                                 p.seq_len);
    double replays = 0.0, passes = 0.0;  // per scored token: replay GEMMs, kl's forward passes
    for (size_t g = 0; g < space->groups.size(); ++g) {
      const double candidates = double(space->groups[g].candidates.size() - 1);
      replays += 2.0 * fw.group[g] * candidates;
      passes += fw.group[g] > 0.0 ? candidates : 0.0;
    }
    switch (r.search.method) {
      case score_method::fisher: p.score_flops = (3.0 * fw.per_token + replays) * scored; break;
      case score_method::hessian: p.score_flops = (fw.per_token + replays) * scored; break;
      case score_method::kl: p.score_flops = (1.0 + passes) * fw.per_token * scored; break;
    }
  }
  // the quantized weights held: all of them, or layer by layer the largest layer's (evaluation
  // quantizes each as it loads, the export each linear as it writes it)
  const uint64_t quantized_held = p.layer_by_layer ? p.quantized_layer_bytes : p.quantized_bytes;
  const uint64_t verifying = p.fp32_model_bytes + p.residual_stream_bytes + p.logits_bytes + quantized_held +
                             p.source_bytes + exported;
  const uint64_t scoring =
      p.searched ? p.fp32_model_bytes + p.scoring_bytes + p.scoring_activation_bytes + p.source_bytes : 0;
  p.peak_bytes = std::max(verifying, scoring);
  p.held_bytes = std::max(p.fp32_model_bytes + p.residual_stream_bytes + p.logits_bytes + quantized_held,
                          p.searched ? p.fp32_model_bytes + p.scoring_bytes + p.scoring_activation_bytes : 0);
  return p;
}

// This machine's GEMM rate (FLOP/s) as the runtime computes: each of `threads` threads multiplying
// on its own ([256, 1024] x [1024, 1024]^T in F32, as a window of tokens through a linear), timed
// over ~0.2 s.
double gemm_rate(int threads) {
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t T = 256, K = 1024, N = 1024;
  double flops = 0.0;
  const auto start = std::chrono::steady_clock::now();
  double seconds = 0.0;
#pragma omp parallel num_threads(threads) reduction(+ : flops)
  {
    const matrix x = matrix::Constant(T, K, 0.5f), w = matrix::Constant(N, K, 0.25f);
    matrix y(T, N);
    const auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 0.2) {
      y.noalias() = x * w.transpose();
      flops += 2.0 * double(T * K * N);
    }
  }
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return flops / seconds;
}

uint64_t host_available_memory() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  uint64_t kib = 0;
  while (in >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return 0;
}

uint64_t process_resident_memory() {
  std::ifstream in("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(in >> size >> resident)) return 0;
  return resident * uint64_t(sysconf(_SC_PAGESIZE));
}

std::string memory_warning(const run_plan& p, int processes_here, uint64_t available) {
  const uint64_t needed = p.held_bytes * uint64_t(std::max(processes_here, 1));
  if (available == 0 || needed <= available) return "";
  return fmt::format("this run holds about {}{} at its peak besides the files it maps (`mixq plan`), more than "
                     "the {} this machine has available: expect swapping or the out-of-memory killer{}",
                     bytes_text(double(needed)),
                     processes_here > 1 ? fmt::format(" ({} processes here)", processes_here) : "",
                     bytes_text(double(available)),
                     p.searched || p.layer_by_layer ? "" : " (without --whole-model it holds one layer's weights at a time)");
}

}  // namespace mixq
