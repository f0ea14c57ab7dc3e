// mixq plan --model DIR|config.json --recipe R [--processes N] [--json FILE]: what `mixq quantize`
// will do, before it reads a weight: formats, export size, each process's share and memory.
#include <algorithm>
#include <cstdio>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include <cmath>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "calib/builtin_calibration.hpp"
#include "calib/text_tokenizer.hpp"
#include "pipeline/cli/commands.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/model/hf_config.hpp"
#include "pipeline/plan/run_plan.hpp"
#include "pipeline/report/number_text.hpp"

namespace mixq::cli {
namespace {

namespace fs = std::filesystem;

// config.json's torch_dtype (transformers 5: dtype), for a plan without the checkpoint's headers.
dtype config_dtype(const fs::path& model, const nlohmann::json& cfg, std::string* said) {
  for (const char* key : {"torch_dtype", "dtype"}) {
    const auto it = cfg.find(key);
    if (it == cfg.end() || !it->is_string()) continue;
    const std::string v = it->get<std::string>();
    static const std::map<std::string, dtype> names = {
        {"bfloat16", dtype::bf16}, {"float16", dtype::f16}, {"float32", dtype::f32}};
    if (const auto n = names.find(v); n != names.end()) {
      *said = fmt::format("config.json {} {}", key, v);
      return n->second;
    }
    config_error(model, fmt::format("config key '{}' is \"{}\" (bfloat16, float16 or float32 expected)", key, v));
  }
  *said = "bfloat16 assumed: config.json names no torch_dtype";
  return dtype::bf16;
}

// The tensors' dtypes: from the safetensors headers where the checkpoint is at hand (refusing one
// that contradicts its config, as quantize would), else from config.json; `said` tells which.
dtype_lookup source_dtypes(const fs::path& model, const nlohmann::json& cfg, const model_spec& spec, std::string* said) {
  bool has_weights = false;
  if (fs::is_directory(model))
    for (const auto& e : fs::directory_iterator(model)) has_weights = has_weights || e.path().extension() == ".safetensors";
  if (has_weights) {
    *said = "dtypes from the safetensors headers";
    return checkpoint_dtypes(checkpoint::open(model), spec, dtype::bf16);
  }
  const dtype_lookup from_config = config_dtypes(spec, config_dtype(model, cfg, said));
  if (std::any_of(spec.tensors.begin(), spec.tensors.end(), [](const tensor_spec& t) { return t.kind == tensor_kind::router_bias; }))
    *said += ", router biases F32";
  if (fs::is_directory(model)) *said += "; no .safetensors here, which mixq quantize needs";
  return from_config;
}

// The calibration data's length in tokens, through the model's tokenizer (the built-in text where
// `data` is empty), counted up to `enough` (what the calibration sequences take); -1 where there is
// no checkpoint directory to tokenize with.
int64_t calibration_token_count(const fs::path& model, const model_spec& spec, const std::string& data, int64_t enough) {
  if (!fs::is_directory(model)) {
    if (!data.empty())
      throw std::runtime_error(fmt::format("calibration data {} needs the checkpoint directory (its tokenizer), not {}",
                                           data, model.string()));
    return -1;
  }
  if (!data.empty())  // (must be readable)
    return int64_t(read_token_stream(data, model, spec.dims.vocab, token_dtype::from_extension, enough).size());
  try {
    return int64_t(builtin_calibration_tokens(model, spec.dims.vocab).size());
  } catch (const std::exception&) {
    return -1;  // (no tokenizer for the built-in text: quantize says so itself)
  }
}

std::string gb(uint64_t bytes) { return bytes_text(double(bytes)); }

void print_plan(const model_spec& spec, const recipe& r, const run_plan& p, const std::string& model,
                const std::string& dtypes_from) {
  fmt::print("model:      {} ({})\n", model, spec.architecture);
  std::string blocks;
  for (int k = 0; k < 4; ++k)
    if (p.blocks[k] > 0)
      blocks += fmt::format("{}{} {}", blocks.empty() ? "" : ", ", p.blocks[k], to_string(block_kind(k)));
  fmt::print("blocks:     {}{}\n", blocks, p.mtp_blocks ? fmt::format(" + {} in the MTP head", p.mtp_blocks) : "");
  fmt::print("parameters: {} ({} active per token), {} in linear weights\n", count_text(p.parameters),
             count_text(p.active_parameters), count_text(p.linear_parameters));
  fmt::print("source:     {} ({})\n", gb(p.source_bytes), dtypes_from);
  fmt::print("recipe:     {}\n\n", r.origin);
  if (!p.searched) {
    fmt::print("{:<14} {:>9} {:>18} {:>12}\n", "format", "linears", "parameters", "exported");
    for (const format_share& s : p.formats)
      fmt::print("{:<14} {:>9} {:>18} {:>12}\n", s.stored, count_text(s.linears),
                 count_text(s.parameters), gb(s.bytes));
    fmt::print("\nby role:\n");
    for (const run_plan::role_share& rs : p.roles) {
      std::string line;
      for (const format_share& s : rs.formats)
        line += fmt::format("{}{} {}", line.empty() ? "" : ", ", s.stored, count_text(s.linears));
      fmt::print("  {:<14} {}\n", to_string(rs.role), line);
    }
    fmt::print("\nexport:     {} of tensors ({}; {:.2f}x smaller than the source)\n", gb(p.export_bytes),
               std::fabs(p.stored_bits - p.effective_bits) < 1e-9
                   ? fmt::format("{:.2f} effective bits per linear weight", p.effective_bits)
                   : fmt::format("{:.2f} effective bits per linear weight as stored, {:.2f} with the kept ones as BF16",
                                 p.stored_bits, p.effective_bits),
               double(p.source_bytes) / double(p.export_bytes));
  } else {
    fmt::print("search:     {} of {} linears take part; budget {:.2f} effective bits ({} cost), {:.3f} at the least\n",
               count_text(p.searched_linears), count_text(int64_t(spec.linears.size())), r.search.effective_bits,
               to_string(r.search.cost), p.least_effective_bits);
    fmt::print("export:     between {} (every searched linear in its smallest candidate) and {} (all BF16)\n",
               gb(p.export_bytes_min), gb(p.export_bytes_max));
    if (p.export_bytes_budget > 0) fmt::print("            at most {} under the budget\n", gb(p.export_bytes_budget));
  }
  if (p.kv_scales > 0) fmt::print("KV cache:   FP8 scales for {} attention modules\n", p.kv_scales);
  for (const std::string& n : p.notes) fmt::print("unquantized: {}\n", n);
  for (const std::string& w : p.warnings) fmt::print("warning:    {}\n", w);

  fmt::print("\nprocesses:  {}: each calibrates {}{} of {} sequences of {} tokens and quantizes {}{} of {} linears\n",
             p.processes, p.sequences_known ? "" : "up to ", count_text(p.sequences_per_process),
             count_text(p.calibration_sequences), p.seq_len, p.searched ? "up to " : "",
             count_text(p.linears_per_process), count_text(p.quantized_linears));
  if (p.searched)
    fmt::print("            (scoring: each process quantizes every searched linear in every candidate itself)\n");
  const bool lbl = p.layer_by_layer;
  fmt::print("memory:     about {} per process at the peak, {} of it its own (the rest: mapped file pages, which\n"
             "            the kernel can evict and read again); {}:\n",
             gb(p.peak_bytes), gb(p.held_bytes), lbl ? "layer by layer" : "holding the whole model");
  fmt::print("  FP32 weights   {:>10}  {}\n", gb(p.fp32_model_bytes),
             lbl ? "the embeddings, final norm, lm_head and one layer at a time" : "every layer's");
  if (lbl) fmt::print("  residuals      {:>10}  every sequence's, between layers\n", gb(p.residual_stream_bytes));
  fmt::print("  quantized      {:>10}  {}{}\n", gb(lbl ? p.quantized_layer_bytes : p.quantized_bytes),
             lbl ? "one layer's at a time" : "every linear's", p.searched ? ", at most" : "");
  fmt::print("  logits         {:>10}  a window's, per thread\n", gb(p.logits_bytes));
  if (p.searched)
    fmt::print("  scoring        {:>10}  {} candidates ({}), {} scores' activations on {} threads ({})\n",
               gb(p.scoring_bytes + p.scoring_activation_bytes), lbl ? "one layer's" : "every searched linear's",
               gb(p.scoring_bytes), to_string(r.search.method), p.threads, gb(p.scoring_activation_bytes));
  fmt::print("  mapped         {:>10}  the source, and the staged export as it is verified\n", gb(p.source_bytes));
  if (const uint64_t available = host_available_memory(); available > 0)
    fmt::print("  (this machine has {} available)\n", gb(available));
}

std::string flops_text(double f) {
  return f >= 1e15 ? fmt::format("{:.2f} PFLOP", f / 1e15)
         : f >= 1e12 ? fmt::format("{:.2f} TFLOP", f / 1e12)
                     : fmt::format("{:.2f} GFLOP", f / 1e9);
}

std::string duration_text(double s) {
  if (s < 120) return fmt::format("{:.0f} s", s);
  if (s < 7200) return fmt::format("{:.0f} min", s / 60);
  if (s < 172800) return fmt::format("{:.1f} h", s / 3600);
  return fmt::format("{:.1f} days", s / 86400);
}

void print_work(const run_plan& p, double rate) {
  const double total = p.calibrate_flops + p.score_flops + p.evaluate_flops;
  fmt::print("work:       {} per process: calibrate {}{}, evaluate {}\n", flops_text(total),
             flops_text(p.calibrate_flops), p.searched ? fmt::format(", score {}", flops_text(p.score_flops)) : "",
             flops_text(p.evaluate_flops));
  fmt::print("            about {} at this machine's GEMM rate ({:.1f} GFLOP/s on {} threads; loading, quantizing\n"
             "            and writing come on top)\n",
             duration_text(total / rate), rate / 1e9, p.threads);
}

nlohmann::ordered_json plan_json(const model_spec& spec, const recipe& r, const run_plan& p) {
  nlohmann::ordered_json blocks = nlohmann::ordered_json::object();
  for (int k = 0; k < 4; ++k) blocks[std::string(to_string(block_kind(k)))] = p.blocks[k];
  blocks["mtp"] = p.mtp_blocks;
  nlohmann::ordered_json j = {{"architecture", spec.architecture},
                              {"blocks", blocks},
                              {"parameters", p.parameters},
                              {"active_parameters", p.active_parameters},
                              {"linear_parameters", p.linear_parameters},
                              {"source_bytes", p.source_bytes},
                              {"recipe", r.origin},
                              {"searched", p.searched}};
  if (!p.searched) {
    nlohmann::ordered_json formats = nlohmann::ordered_json::array();
    for (const format_share& s : p.formats)
      formats.push_back({{"format", std::string(traits_of(s.format).name)},
                         {"linears", s.linears},
                         {"parameters", s.parameters},
                         {"bytes", s.bytes}});
    j["formats"] = formats;
    nlohmann::ordered_json roles = nlohmann::ordered_json::object();
    for (const run_plan::role_share& rs : p.roles) {
      nlohmann::ordered_json by_format = nlohmann::ordered_json::object();
      for (const format_share& s : rs.formats)
        by_format[std::string(traits_of(s.format).name)] = {{"linears", s.linears}, {"parameters", s.parameters}};
      roles[std::string(to_string(rs.role))] = by_format;
    }
    j["roles"] = roles;
    j["export_bytes"] = p.export_bytes;
    j["effective_bits"] = p.effective_bits;
    j["stored_bits"] = p.stored_bits;
  } else {
    j["searched_linears"] = p.searched_linears;
    j["budget_effective_bits"] = r.search.effective_bits;
    j["least_effective_bits"] = p.least_effective_bits;
    j["export_bytes_min"] = p.export_bytes_min;
    j["export_bytes_max"] = p.export_bytes_max;
    if (p.export_bytes_budget > 0) j["export_bytes_budget"] = p.export_bytes_budget;
  }
  if (!p.refused.empty()) j["refused"] = p.refused;
  j["kv_scales"] = p.kv_scales;
  j["notes"] = p.notes;
  j["warnings"] = p.warnings;
  j["processes"] = {{"count", p.processes},
                    {"calibration_sequences", p.calibration_sequences},
                    {"sequences_known", p.sequences_known},
                    {"sequences_per_process", p.sequences_per_process},
                    {"seq_len", p.seq_len},
                    {"quantized_linears", p.quantized_linears},
                    {"linears_per_process", p.linears_per_process}};
  j["memory_per_process"] = {{"peak_bytes", p.peak_bytes},
                             {"held_bytes", p.held_bytes},
                             {"layer_by_layer", p.layer_by_layer},
                             {"fp32_model_bytes", p.fp32_model_bytes},
                             {"residual_stream_bytes", p.residual_stream_bytes},
                             {"logits_bytes", p.logits_bytes},
                             {"quantized_bytes", p.quantized_bytes},
                             {"quantized_layer_bytes", p.quantized_layer_bytes},
                             {"scoring_bytes", p.scoring_bytes},
                             {"scoring_activation_bytes", p.scoring_activation_bytes},
                             {"mapped_source_bytes", p.source_bytes}};
  j["flops_per_process"] = {{"calibrate", p.calibrate_flops}, {"score", p.score_flops}, {"evaluate", p.evaluate_flops}};
  return j;
}

}  // namespace

void add_plan_command(CLI::App& app) {
  struct options {
    std::string model, recipe, json, calib;
    int processes = 1;
    int threads = omp_get_max_threads();
    bool layer_by_layer = false, whole_model = false;
    recipe_overrides overrides;
  };
  auto o = std::make_shared<options>();
  auto* cmd = app.add_subcommand(
      "plan", "What `mixq quantize` will do, from config.json and the recipe alone: formats, export size, memory");
  cmd->add_option("--model", o->model,
                  "checkpoint directory (tensor dtypes from its safetensors headers) or a config.json alone")
      ->required();
  cmd->add_option("--recipe", o->recipe, "recipe YAML file or built-in name (see recipes/README.md)")->required();
  cmd->add_option("--processes,--ranks", o->processes, "processes (ranks) the run will start: mpirun -np / srun -n")
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--calib", o->calib, "calibration data, as quantize takes it (default: the recipe's, else built in)");
  cmd->add_option("--threads", o->threads, "threads per process (default: OMP_NUM_THREADS, else this machine's cores)")
      ->check(CLI::Range(1, 1 << 16));
  add_layer_holding_flags(*cmd, o->layer_by_layer, o->whole_model);
  add_recipe_overrides(*cmd, o->overrides);
  cmd->add_option("--json", o->json, "also write the plan as JSON to this file");
  cmd->callback([o] {
    const fs::path model(o->model);
    if (!fs::exists(model)) throw std::runtime_error(fmt::format("{}: not found", o->model));
    const nlohmann::json cfg = read_hf_config(model);
    require_unquantized_checkpoint(model, cfg);
    const model_spec spec = model_spec_from_config(cfg, hf_config_path(model).string());
    recipe r = load_recipe(o->recipe);
    apply_recipe_overrides(o->overrides, r);
    std::string dtypes_from;
    const dtype_lookup source_dtype = source_dtypes(model, cfg, spec, &dtypes_from);
    plan_setup setup;
    setup.processes = o->processes;
    setup.threads = o->threads;
    setup.max_positions = config_max_positions(model, cfg, spec.architecture);
    if (setup.max_positions > 0 && o->overrides.seq_len > setup.max_positions)  // (as quantize refuses it)
      throw std::runtime_error(fmt::format("calibration seq_len {} is more than {} allows: max_position_embeddings is "
                                           "{}", o->overrides.seq_len, o->model, setup.max_positions));
    setup.weights = asked_layer_holding(o->layer_by_layer, o->whole_model);
    const int64_t seq_len = setup.max_positions > 0 ? std::min(r.calibration.seq_len, setup.max_positions)
                                                    : r.calibration.seq_len;
    setup.calibration_tokens = calibration_token_count(model, spec, o->calib.empty() ? r.calibration.data : o->calib,
                                                       r.calibration.samples * seq_len);
    const run_plan p = make_run_plan(spec, r, source_dtype, setup);
    print_plan(spec, r, p, o->model, dtypes_from);
    const double rate = gemm_rate(p.threads);
    print_work(p, rate);
    if (!o->json.empty()) {
      std::ofstream f(o->json);
      nlohmann::ordered_json j = plan_json(spec, r, p);
      j["gemm_flops_per_second"] = rate;
      f << j.dump(2) << "\n";
      if (!f.flush()) throw std::runtime_error(fmt::format("{}: cannot write", o->json));
    }
    if (!p.refused.empty()) throw std::runtime_error(fmt::format("mixq quantize will refuse this: {}", p.refused));
  });
}

}  // namespace mixq::cli
