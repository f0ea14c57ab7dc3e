// mixq quantize --model DIR --recipe FILE|NAME --out DIR: calibrate, quantize per the recipe's rules,
// export a checkpoint vLLM / SGLang / TensorRT-LLM load, and verify it by re-loading.
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <omp.h>

#include "pipeline/cli/commands.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/model/hf_config.hpp"
#include "pipeline/plan/run_plan.hpp"
#include "pipeline/report/number_text.hpp"
#include "pipeline/cli/progress.hpp"
#include "pipeline/quantize/quantize_run.hpp"

#ifndef MIXQ_VERSION
#define MIXQ_VERSION "unknown"
#endif

namespace mixq::cli {
namespace {

// The processes a launcher started on this machine (Open MPI, SLURM), else the world's size.
int processes_on_this_node(const run_world& world) {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "MPI_LOCALNRANKS"})
    if (const char* v = std::getenv(name)) {
      const int n = std::atoi(v);  // (SLURM may write "2(x3)": the leading count is this node's)
      if (n > 0) return n;
    }
  return world.size();
}

// Before any work: the plan's peak against this machine's available memory. A warning only (the
// mapped checkpoints can be paged out), and silent on errors: the run names those itself. Returns
// the planned peak per process (0 where there is none), for the summary.
uint64_t warn_about_memory(const quantize_request& rq, const run_world& world) {
  try {
    const nlohmann::json cfg = read_hf_config(rq.model);
    const model_spec spec = model_spec_from_config(cfg, hf_config_path(rq.model).string());
    const dtype_lookup dtypes = checkpoint_dtypes(checkpoint::open(rq.model), spec, dtype::bf16);
    plan_setup setup;
    setup.processes = world.size();
    setup.threads = omp_get_max_threads();
    setup.max_positions = config_max_positions(rq.model, cfg, spec.architecture);
    setup.weights = rq.weights;
    run_plan p = make_run_plan(spec, rq.rcp, dtypes, setup);
    const uint64_t resident = process_resident_memory();  // (the peak on top of what the process holds already)
    p.peak_bytes += resident;
    p.held_bytes += resident;
    const std::string w = memory_warning(p, processes_on_this_node(world), host_available_memory());
    if (!w.empty()) fmt::print(stderr, "mixq: warning: {}\n", w);
    return p.peak_bytes;
  } catch (const std::exception&) {
    return 0;
  }
}

void print_report(const quantize_request& rq, const quantize_report& r, const run_world& world, uint64_t planned_peak) {
  fmt::print("model:        {}\n", rq.model.string());
  if (world.size() > 1)
    fmt::print("processes:    {} (started by {}; each calibrated, scored, quantized and evaluated a 1/{} share)\n", world.size(),
               run_world::launcher(), world.size());
  fmt::print("recipe:       {} ({}, kv cache {}, layout {})\n", rq.rcp.name, rq.rcp.origin, to_string(rq.rcp.kv_cache),
             to_string(rq.rcp.output.layout));
  fmt::print("weights on:   {}; {}\n", describe(rq.device),
             r.weights == layer_weights::on_demand ? "one layer's FP32 weights held at a time"
                                                   : "every layer's FP32 weights held");
  fmt::print("calibration:  {} sequences, {} tokens from {}{}{}\n", r.calib_sequences, r.calib_tokens, r.calib_source,
             r.calib_sequences < rq.rcp.calibration.samples
                 ? fmt::format(" (of {} asked: the data holds no more)", rq.rcp.calibration.samples)
                 : "",
             r.stats_reused ? fmt::format(" (reused {})", r.stats_file.string()) : "");
  for (const std::string& w : r.plan.warnings) fmt::print("warning:      {}\n", w);
  if (r.searched) {
    const search_outcome& s = r.search;
    for (const std::string& w : s.space.warnings) fmt::print("warning:      {}: {}\n", rq.rcp.origin, w);
    fmt::print("search:       {} scores on {} sequences ({} tokens){}, {:.2f}s; solved {} groups exactly in {:.3f}s{}\n",
               to_string(rq.rcp.search.method), s.scores.sequences, s.scores.tokens,
               s.scores_reused ? " (reused)" : "", s.score_seconds, s.space.groups.size(), s.solve_seconds,
               s.proven_optimal ? " (proven optimal)" : " (NOT proven optimal: node limit)");
    fmt::print("budget:       {:.3f} effective bits asked, {:.3f} reached (this model spans {:.3f} to {:.3f}){}\n",
               s.budget_bits, s.achieved_bits, s.min_bits, s.max_bits,
               rq.rcp.search.cost == cost_model::active_moe
                   ? "; counted over the weights active per token (cost: active_moe), the table below over all"
                   : "");
    fmt::print("front:       ");
    for (const front_entry& e : s.front)
      if (e.feasible) fmt::print(" {:.1f} bits: score {:.4g};", e.bits, e.score);
      else fmt::print(" {:.1f} bits: infeasible;", e.bits);
    fmt::print("\n");
  }
  std::map<std::string, int> notes;  // identical notes (e.g. every down_proj) printed once with a count
  for (const linear_decision& d : r.plan.linears)
    if (!d.note.empty()) ++notes[d.note];
  for (const auto& [note, n] : notes) fmt::print("unquantized:  {} linear{}: {}\n", n, n == 1 ? "" : "s", note);
  if (!r.uncalibrated_experts.empty())
    fmt::print("note:         {} expert(s) saw no calibration token; their input scales come from the other "
               "experts of their layer: {}\n",
               r.uncalibrated_experts.size(),
               r.uncalibrated_experts.size() <= 8
                   ? fmt::format("{}", fmt::join(r.uncalibrated_experts, ", "))
                   : fmt::format("{}, ... (all in {})",
                                 fmt::join(r.uncalibrated_experts.begin(), r.uncalibrated_experts.begin() + 8, ", "),
                                 (r.run_dir / "summary.json").string()));
  if (!r.uncalibrated_attention.empty())
    fmt::print("note:         {} attention block(s) are outside the calibrated forward pass; their KV scales are "
               "the largest calibrated ones: {}\n",
               r.uncalibrated_attention.size(), fmt::join(r.uncalibrated_attention, ", "));
  fmt::print("\n{:<14}{:>9}{:>14}{:>10}{:>14}\n", "format", "linears", "parameters", "bits", "size");
  for (const format_usage& u : r.usage)
    fmt::print("{:<14}{:>9}{:>14}{:>10.2f}{:>14}\n", u.stored, u.linears, u.parameters, u.bits / double(u.parameters),
               bytes_text(u.bits / 8.0));
  if (std::fabs(r.stored_bits - r.effective_bits) < 1e-9)
    fmt::print("effective bits over all linears: {:.3f}\n", r.effective_bits);
  else  // (a source in F32 or F16 keeps its unquantized linears in that dtype)
    fmt::print("effective bits over all linears: {:.3f} as stored; {:.3f} with the kept linears as BF16, as budgets "
               "count them\n", r.stored_bits, r.effective_bits);
  fmt::print("checkpoint size: {} -> {} ({:.2f}x smaller)\n\n", bytes_text(double(r.source_bytes)),
             bytes_text(double(r.exported.tensor_bytes)), double(r.source_bytes) / double(r.exported.tensor_bytes));
  for (const auto& [bits, ppl] : r.measured_front)
    fmt::print("front:        {:.3f} bits: ppl {:.6f} (searched)\n", bits, ppl);
  fmt::print("perplexity on {} ({} tokens): source {:.6f}{}, fake-quant {:.6f}, export {:.6f} (re-loaded; matches)\n",
             r.eval_source, r.eval_tokens, r.ppl_source, r.ppl_source_reused ? " (stored by an earlier run)" : "",
             r.ppl_fake_quant, r.ppl_export);
  double total = 0.0;
  std::string stages;
  for (const auto& [stage, s] : r.stage_seconds) stages += fmt::format("{}{} {:.2f}s", stages.empty() ? "" : ", ", stage, s), total += s;
  fmt::print("time:         {:.2f}s ({})\n", total, stages);
  fmt::print("peak memory:  {}{}\n", bytes_text(double(r.peak_rss_bytes)),
             planned_peak > 0 ? fmt::format(" (planned {})", bytes_text(double(planned_peak))) : "");
  fmt::print("wrote:        {} ({} files; run record in {})\n", rq.out.string(), r.exported.files.size(),
             r.run_dir.string());
  if (r.exported.abandoned_removed > 0)
    fmt::print("cleaned:      {} staging director{} of killed runs beside it\n", r.exported.abandoned_removed,
               r.exported.abandoned_removed == 1 ? "y" : "ies");
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  struct options {
    std::string model, recipe, out, run_dir, calib, eval, device = "auto";
    int64_t eval_ctx = 0;
    recipe_overrides overrides;
    bool resume = false, force = false, quiet = false, measure_front = false, layer_by_layer = false,
         whole_model = false;
  };
  auto o = std::make_shared<options>();
  auto* cmd = app.add_subcommand(
      "quantize",
      "Quantize a checkpoint with a recipe: calibrate, quantize, export (ModelOpt or compressed-tensors layout), "
      "and verify the export by re-loading it.\n"
      "Example: mixq quantize --model ../shared/models/stories260K --recipe llama_nvfp4 --out /tmp/s-nvfp4\n"
      "Across processes (data parallel, the same bytes): mpirun -np N mixq quantize ..., or\n"
      "sbatch launch/slurm/quantize.sbatch --model DIR --recipe NAME --out DIR");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint directory")->required();
  cmd->add_option("--recipe", o->recipe,
                  "recipe YAML file, or the name of a built-in recipe (mixq formats --recipes lists them)")
      ->required();
  cmd->add_option("--out", o->out, "output checkpoint directory (written complete or not at all)")->required();
  cmd->add_option("--calib", o->calib, "calibration data (.txt, .jsonl, .u16.bin / .u32.bin, .npy); overrides the recipe");
  cmd->add_option("--eval", o->eval, "held-out data to report perplexity on (default: the calibration sequences)");
  cmd->add_option("--eval-ctx", o->eval_ctx, "perplexity window, at most max_position_embeddings (default: the calibration seq_len)")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 30));
  add_recipe_overrides(*cmd, o->overrides);
  cmd->add_option("--run-dir", o->run_dir, "run directory for statistics and the summary (default: OUT.run)");
  cmd->add_option("--device", o->device,
                  "where weights quantize: cpu, cuda (a GPU, when mixq is built with CUDA) or auto (cuda if one is "
                  "found); the checkpoint is the same bytes either way")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))
      ->capture_default_str();
  add_layer_holding_flags(*cmd, o->layer_by_layer, o->whole_model);
  cmd->add_flag("--resume", o->resume, "reuse the run directory's calibration statistics if they match, and the source perplexity stored for the same model, evaluation tokens and window");
  cmd->add_flag("--force", o->force, "replace an existing output directory once the new export is verified");
  cmd->add_flag("--quiet", o->quiet, "no progress output");
  cmd->add_flag("--measure-front", o->measure_front,
                "with a search: also evaluate the optimum at every feasible report budget (for mixq report)");
  cmd->callback([o] {
    // (every process reads the same recipe and options: a mistake is told once, by the first)
    const run_world& world = run_world::get();
    quantize_request rq;
    world.stage([&] {
      rq.model = o->model;
      rq.out = o->out;
      rq.run_dir = o->run_dir;
      rq.rcp = load_recipe(o->recipe);
      apply_recipe_overrides(o->overrides, rq.rcp);
      rq.seq_len_explicit = o->overrides.seq_len > 0;
      rq.calib = o->calib;
      rq.eval_data = o->eval;
      rq.eval_ctx = o->eval_ctx;
      rq.resume = o->resume;
      rq.overwrite = o->force;
      rq.measure_front = o->measure_front;
      if (rq.measure_front && !rq.rcp.search.enabled)
        throw std::runtime_error(fmt::format("--measure-front measures a search's front; {} has fixed rules",
                                             rq.rcp.origin));
      rq.weights = asked_layer_holding(o->layer_by_layer, o->whole_model);
      rq.device = resolve_weight_device(o->device);
      rq.producer_version = MIXQ_VERSION;
    });
    std::unique_ptr<progress_bar> bar;
    std::string bar_stage;
    rq.progress = [&](const std::string& stage, int64_t done, int64_t total) {
      if (stage != bar_stage)
        bar.reset(), bar = std::make_unique<progress_bar>(stage, total, o->quiet || !world.root()), bar_stage = stage;
      bar->update(done);
    };
    const uint64_t planned_peak = world.root() ? warn_about_memory(rq, world) : 0;
    const quantize_report r = run_quantize(rq, world);
    bar.reset();
    if (world.root()) print_report(rq, r, world, planned_peak);
  });
}

}  // namespace mixq::cli
