#include "pipeline/quantize/quantize_run.hpp"

#include <algorithm>
#include <bit>
#include <cctype>
#include <chrono>
#include <cmath>
#include <fstream>
#include <optional>
#include <sys/resource.h>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calib/builtin_calibration.hpp"
#include "calib/text_tokenizer.hpp"
#include "pipeline/autoquant/search_groups.hpp"
#include "pipeline/autoquant/sensitivity.hpp"
#include "pipeline/eval/perplexity.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/io/run_paths.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error
#include "pipeline/model/hf_config.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/quantize/calibrate.hpp"
#include "pipeline/quantize/quantize_weights.hpp"
#include "pipeline/quantize/run_log.hpp"

namespace mixq {
namespace fs = std::filesystem;

namespace {

// The runtimes take the KV-cache scheme from the quantization config, which an export with no
// quantized linear does not carry: its k_scale / v_scale would be ignored (and the measured
// perplexity, with FP8 KV applied, would not be what they compute).
void require_a_quantized_linear_for_the_kv_cache(const quant_plan& plan, const recipe& r) {
  if (r.kv_cache != kv_cache_format::fp8) return;
  for (const linear_decision& d : plan.linears)
    if (d.weight.format != format_id::bf16) return;
  throw io_error(fmt::format("{}: kv_cache: fp8 with every linear BF16{}: the runtimes read the KV-cache scheme from "
                             "the quantization config, which such an export does not carry; quantize some linears, or "
                             "drop kv_cache", r.origin, r.search.enabled ? " (the search's choice at this budget)" : ""));
}

// Each stage's wall time, in the report and in the run log.
class stage_clock {
 public:
  explicit stage_clock(std::vector<std::pair<std::string, double>>& out) : out_(out) {}
  void done(const std::string& stage) {
    const auto now = std::chrono::steady_clock::now();
    out_.emplace_back(stage, std::chrono::duration<double>(now - last_).count());
    log.info("{}: {:.2f} s", stage, out_.back().second);
    last_ = now;
  }
  run_log log;

 private:
  std::vector<std::pair<std::string, double>>& out_;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

// Non-overlapping windows of seq_len tokens from the start of the stream (calibration_sequence_count).
std::vector<std::vector<int32_t>> split_sequences(const std::vector<int32_t>& tokens, int64_t samples,
                                                  int64_t seq_len) {
  const int64_t n = calibration_sequence_count(int64_t(tokens.size()), samples, seq_len);
  if (n == 1 && int64_t(tokens.size()) < seq_len) return {tokens};  // shorter than one window: whole
  std::vector<std::vector<int32_t>> out;
  for (int64_t k = 0; k < n; ++k)
    out.emplace_back(tokens.begin() + std::ptrdiff_t(k * seq_len), tokens.begin() + std::ptrdiff_t((k + 1) * seq_len));
  return out;
}

std::string calibration_settings_text(const calibration_settings& c, const std::string& source, int64_t seq_len) {
  return fmt::format("samples={};seq_len={};batch={};data={}", c.samples, seq_len, c.batch, source);
}

int64_t peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return int64_t(u.ru_maxrss) * 1024;  // Linux reports KiB
}

// The source model's perplexity: with --resume, the one an earlier run of this mixq stored in the run
// directory for the same model, evaluation tokens and window (the same bits: evaluation does not
// depend on threads, processes or how layers are held), else evaluated and stored for the next run.
double source_perplexity(const quantize_request& rq, quantize_report& rep, const calibration_stats& stats,
                         const std::vector<int32_t>& eval_tokens, int64_t ctx, const run_world& world,
                         const std::function<double()>& evaluate) {
  const fs::path file = rep.run_dir / "source_perplexity.json";
  const nlohmann::json key = {{"mixq", rq.producer_version},  // (another build may round the forward otherwise)
                              {"model", stats.fingerprint.model},
                              {"eval_tokens", fnv1a_hex(eval_tokens.data(), eval_tokens.size() * sizeof(int32_t))},
                              {"eval_ctx", ctx}};
  if (rq.resume) {
    std::string found;  // the stored value's bits as the root reads them (16 hex digits), "" if none
    world.stage([&] {
      if (!world.root() || !fs::exists(file)) return;
      std::ifstream in(file);
      const nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.contains("key") || j["key"] != key || !j.contains("bits") || !j["bits"].is_string()) return;
      const std::string bits = j["bits"];  // (a record of other tokens or a damaged one: evaluated again)
      if (bits.size() == 16 && bits.find_first_not_of("0123456789abcdef") == std::string::npos) found = bits;
    });
    if (world.size() > 1) found = world.all_gather(found)[0];
    if (!found.empty()) {
      rep.ppl_source_reused = true;
      if (rq.progress) rq.progress("evaluate", 1, 3);
      return std::bit_cast<double>(uint64_t(std::stoull(found, nullptr, 16)));
    }
  }
  const double ppl = evaluate();
  world.stage([&] {
    if (!world.root()) return;
    fs::create_directories(rep.run_dir);
    const nlohmann::json j = {{"key", key}, {"perplexity", ppl}, {"bits", fmt::format("{:016x}", std::bit_cast<uint64_t>(ppl))}};
    std::ofstream(file) << j.dump(2) << "\n";
  });
  return ppl;
}

// Evaluation (each process its share of the windows), the export (written by the root, verified by
// every process) and the run's record (the root's).
void finish(const quantize_request& rq, quantize_report& rep, stage_clock& clock, const checkpoint& source,
            const model_spec& spec, std::unique_ptr<causal_lm> model, const std::vector<std::vector<int32_t>>& sequences,
            int64_t seq_len, const calibration_stats& stats, const quantized_weights* all,
            const weight_quantizer* layer_by_layer, const run_world& world) {
  // size and bits per format, over every linear
  std::map<std::pair<format_id, std::string>, format_usage> usage;
  const layer_formats formats = all ? formats_of(spec, *all) : formats_of(spec, *layer_by_layer);
  std::unordered_map<std::string, dtype> source_dtype;  // kept linears are copied as they are
  for (const auto& e : source.tensors()) source_dtype.emplace(e.tensor->name, e.tensor->type);
  double bits = 0.0, stored_bits = 0.0;
  int64_t params = 0;
  for (size_t i = 0; i < spec.linears.size(); ++i) {
    const format_id f = formats[i].second;
    const auto kept = source_dtype.find(spec.linears[i].module + ".weight");
    const bool copied = f == format_id::bf16 && kept != source_dtype.end();
    std::string stored(copied ? dtype_name(kept->second) : traits_of(f).name);
    if (copied) std::transform(stored.begin(), stored.end(), stored.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    const double b = copied ? double(dtype_bits(kept->second)) : traits_of(f).effective_bits;
    format_usage& u = usage.try_emplace({f, stored}, format_usage{f, stored}).first->second;
    const int64_t n = spec.linears[i].numel();
    ++u.linears;
    u.parameters += n;
    u.bits += double(n) * b;
    bits += double(n) * traits_of(f).effective_bits;
    stored_bits += double(n) * b;
    params += n;
  }
  for (const auto& [f, u] : usage) rep.usage.push_back(u);
  rep.effective_bits = params > 0 ? bits / double(params) : 0.0;
  rep.stored_bits = params > 0 ? stored_bits / double(params) : 0.0;
  for (const auto& e : source.tensors()) rep.source_bytes += e.tensor->end - e.tensor->begin;

  // verification tokens: source, fake-quant and the re-loaded export see the same ones
  std::vector<int32_t> eval_tokens;
  world.stage([&] {
    if (rq.eval_data.empty()) {
      rep.eval_source = "the calibration sequences";
      for (const auto& s : sequences) eval_tokens.insert(eval_tokens.end(), s.begin(), s.end());
    } else {
      rep.eval_source = rq.eval_data.string();
      eval_tokens = read_token_stream(rq.eval_data, rq.model, spec.dims.vocab);
    }
  });
  const int64_t ctx = std::min(rq.eval_ctx > 0 ? rq.eval_ctx : seq_len, model->max_positions());
  rep.eval_tokens = int64_t(eval_tokens.size());
  const auto eval = [&](causal_lm& m, int64_t step, const layer_loaded& loaded = {}) {
    const double ppl = evaluate_perplexity(m, eval_tokens, ctx, world, loaded).ppl;
    if (rq.progress) rq.progress("evaluate", step, 3);
    return ppl;
  };
  // m fake-quantized (every weight at once, or each layer as it loads, quantized then) and evaluated
  const auto eval_quantized = [&](causal_lm& m, int64_t step, const quantized_weights* q, const weight_quantizer* lazy) {
    if (q) {
      apply_fake_quant(m, *q);
      return eval(m, step);
    }
    apply_fake_quant(m, lazy->quantize_layer(outside_layers));
    return eval(m, step, [&](causal_lm& loading, int64_t layer) {
      apply_fake_quant(loading, lazy->quantize_layer(layer));
    });
  };
  rep.ppl_source = source_perplexity(rq, rep, stats, eval_tokens, ctx, world, [&] { return eval(*model, 1); });
  if (!std::isfinite(rep.ppl_source)) throw io_error(nonfinite_perplexity_message(rq.model, rep.ppl_source));
  if (rep.searched && rq.measure_front) {  // the front's optimum at each feasible budget, on these tokens
    for (const front_entry& e : rep.search.front) {
      if (!e.feasible) continue;
      const quant_plan pe = plan_of_choice(spec, rep.search.space, e.choice);
      std::unique_ptr<causal_lm> m;
      world.stage([&] { m = load_causal_lm(rq.model, {}, rep.weights); });
      double ppl = 0.0;
      if (rep.weights == layer_weights::all) {
        const quantized_weights qe = quantize_weights(source, spec, pe, rq.rcp.kv_cache, stats, {}, rq.device, world,
                                                           rq.rcp.output.layout);
        ppl = eval_quantized(*m, 2, &qe, nullptr);
      } else {
        const weight_quantizer qe(source, spec, pe, rq.rcp.kv_cache, stats, rq.device, world, rq.rcp.output.layout);
        ppl = eval_quantized(*m, 2, nullptr, &qe);
      }
      rep.measured_front.emplace_back(e.achieved_bits, ppl);
    }
    world.stage([&] {
      if (world.root()) record_measured_front(rep.run_dir / "search.json", rep.measured_front, rep.ppl_source);
    });
  }
  rep.ppl_fake_quant = eval_quantized(*model, 2, all, layer_by_layer);
  model.reset();
  clock.done("evaluate");

  // export, verified before it is renamed into place
  export_options eo;
  eo.layout = rq.rcp.output.layout;
  eo.kv = rq.rcp.kv_cache;
  eo.max_shard_bytes = rq.rcp.output.max_shard_bytes;
  eo.overwrite = rq.overwrite;
  eo.producer_version = rq.producer_version;
  const auto verify = [&](const fs::path& staged) {
    std::unique_ptr<causal_lm> reloaded;
    world.stage([&] { reloaded = load_causal_lm(staged, {}, rep.weights); });
    rep.ppl_export = eval(*reloaded, 3);
    const double rel = std::fabs(rep.ppl_export - rep.ppl_fake_quant) / rep.ppl_fake_quant;
    if (!(rel <= 1e-4))
      throw io_error(fmt::format("{}: the exported checkpoint's perplexity {:.6f} differs from the fake-quantized "
                                 "model's {:.6f} by {:.2e} (relative; the limit is 1e-4), so it was not written",
                                 rq.out.string(), rep.ppl_export, rep.ppl_fake_quant, rel));
  };
  // The root writes the export into its temporary directory and announces it; every process
  // re-loads and evaluates it (an empty announcement: the root failed before, nothing to verify).
  world.stage([&] {
    if (!world.root()) {
      const std::string staged = world.all_gather("")[0];
      if (!staged.empty()) verify(staged);
      return;
    }
    bool announced = false;
    eo.verify = [&](const fs::path& staged) {
      if (world.size() > 1) (void)world.all_gather(staged.string());
      announced = true;
      verify(staged);
    };
    try {
      rep.exported = all ? export_checkpoint(source, spec, *all, rq.out, eo)
                         : export_checkpoint(source, spec, *layer_by_layer, rq.out, eo);
    } catch (...) {
      if (world.size() > 1 && !announced) (void)world.all_gather("");
      throw;
    }
  });
  clock.done("export + verify");
  rep.peak_rss_bytes = peak_rss_bytes();

  // the run's record
  nlohmann::ordered_json s = {{"model", rq.model.string()},
                              {"recipe", rq.rcp.origin},
                              {"out", rq.out.string()},
                              {"layout", std::string(to_string(rq.rcp.output.layout))},
                              {"searched", rep.searched},  // (mixq report: whether search.json is this run's)
                              {"effective_bits", rep.effective_bits},
                              {"stored_bits", rep.stored_bits},
                              {"source_bytes", rep.source_bytes},
                              {"export_bytes", rep.exported.tensor_bytes},
                              {"ppl", {{"source", rep.ppl_source}, {"fake_quant", rep.ppl_fake_quant},
                                       {"export", rep.ppl_export}, {"data", rep.eval_source}, {"ctx", ctx}}},
                              {"uncalibrated_experts", rep.uncalibrated_experts},
                              {"uncalibrated_attention", rep.uncalibrated_attention}};
  nlohmann::ordered_json layers = nlohmann::ordered_json::object();
  for (size_t i = 0; i < spec.linears.size(); ++i) {
    nlohmann::ordered_json l = {{"format", std::string(traits_of(formats[i].second).name)}};
    if (formats[i].second != format_id::bf16) l["weights"] = describe(rep.plan.linears[i].weight);
    else if (const auto t = source_dtype.find(spec.linears[i].module + ".weight"); t != source_dtype.end())
      l["stored"] = std::string(dtype_name(t->second));  // copied as it is in the source
    if (!rep.plan.linears[i].note.empty()) l["note"] = rep.plan.linears[i].note;
    layers[spec.linears[i].module] = std::move(l);
  }
  s["layers"] = std::move(layers);
  world.stage([&] {
    if (world.root()) std::ofstream(rep.run_dir / "summary.json") << s.dump(2) << "\n";
  });
}

// Calibrate (or reuse the statistics), search, quantize, evaluate, export: past the load stage.
void quantize_loaded(const quantize_request& rq, const run_world& world, quantize_report& rep, stage_clock& clock,
                     const checkpoint& source, const model_spec& spec, std::unique_ptr<causal_lm> model,
                     const std::vector<std::vector<int32_t>>& sequences, int64_t seq_len,
                     const std::function<std::function<void(int64_t, int64_t)>(const std::string&)>& progress) {
  const calibration_settings& cs = rq.rcp.calibration;

  // calibrate, or reuse the statistics of an earlier run with the same fingerprint
  rep.stats_file = rep.run_dir / "calibration.h5";
  stats_fingerprint fp;
  fp.model = model_fingerprint(rq.model);
  const std::string settings = calibration_settings_text(cs, rep.calib_source, seq_len);
  fp.calibration = fnv1a_hex(settings.data(), settings.size());
  {
    std::vector<int32_t> used;
    for (const auto& s : sequences) used.insert(used.end(), s.begin(), s.end());
    fp.data = fnv1a_hex(used.data(), used.size() * sizeof(int32_t));
  }
  calibration_stats stats;
  const bool reuse = rq.resume && world.roots(fs::exists(rep.stats_file));
  world.stage([&] {
    if (!reuse) return;
    stats = read_calibration_stats(rep.stats_file);
    const std::string mismatch = describe_fingerprint_mismatch(stats.fingerprint, fp);
    if (!mismatch.empty()) throw io_error(fmt::format("{}: {}", rep.stats_file.string(), mismatch));
    rep.stats_reused = true;
  });
  if (!rep.stats_reused) {  // each process calibrates its share of the sequences
    std::vector<std::vector<int32_t>> mine;
    for (size_t i = 0; i < sequences.size(); ++i)
      if (world.takes(int64_t(i))) mine.push_back(sequences[i]);
    clock.log.info("calibrate: {} of {} sequences", mine.size(), sequences.size());
    world.stage([&] { stats = calibrate(*model, mine, progress("calibrate")); });
    combine_calibration(stats, world);
    stats.fingerprint = fp;
    world.stage([&] {
      if (!world.root()) return;
      fs::create_directories(rep.run_dir);
      write_calibration_stats(rep.stats_file, stats);
    });
  }
  rep.calib_sequences = stats.sequences;
  rep.calib_tokens = stats.tokens;
  clock.done("calibrate");

  // search: the formats come from measured sensitivity under the budget
  if (rq.rcp.search.enabled) {
    rep.searched = true;
    rep.search = run_search(*model, rq.rcp, stats, sequences, rep.run_dir, rq.resume, progress("score"), world);
    rep.plan = rep.search.plan;
    require_a_quantized_linear_for_the_kv_cache(rep.plan, rq.rcp);
    clock.done("score + solve");
  }

  // quantize: every weight now, or, layer by layer, each where it is needed (evaluation, export), so
  // that the quantized weights are never all held
  std::optional<quantized_weights> all;
  std::optional<weight_quantizer> lazy;
  if (rep.weights == layer_weights::all)
    all = quantize_weights(source, spec, rep.plan, rq.rcp.kv_cache, stats, progress("quantize"), rq.device, world,
                           rq.rcp.output.layout);
  else
    lazy.emplace(source, spec, rep.plan, rq.rcp.kv_cache, stats, rq.device, world, rq.rcp.output.layout);
  const quantized_weights& scales = all ? *all : lazy->scales();
  rep.uncalibrated_experts = scales.uncalibrated_experts;
  rep.uncalibrated_attention = scales.uncalibrated_attention;
  clock.done(all ? "quantize" : "scan weights");
  finish(rq, rep, clock, source, spec, std::move(model), sequences, seq_len, stats, all ? &*all : nullptr,
         lazy ? &*lazy : nullptr, world);
}

}  // namespace

int64_t calibration_sequence_count(int64_t tokens, int64_t samples, int64_t seq_len) {
  const int64_t windows = std::min(samples, seq_len > 0 ? tokens / seq_len : 0);
  return windows > 0 ? windows : tokens >= 2 ? 1 : 0;
}

std::string layer_by_layer_refusal(const recipe& r) {
  if (!r.search.enabled || scores_layer_by_layer(r.search.method)) return "";
  return fmt::format("the recipe's search scores by {}, which cannot run layer by layer ({}; hessian scores can)",
                     to_string(r.search.method),
                     r.search.method == score_method::fisher ? "it runs backward through the whole model"
                                                             : "it compares the final logits");
}

layer_weights held_layers(const recipe& r, std::optional<layer_weights> asked) {
  const std::string why = layer_by_layer_refusal(r);
  const layer_weights w = asked.value_or(why.empty() ? layer_weights::on_demand : layer_weights::all);
  if (w == layer_weights::on_demand && !why.empty())
    throw io_error(fmt::format("{}: {}: drop --layer-by-layer, or use `method: hessian`", r.origin, why));
  return w;
}

quantize_report run_quantize(const quantize_request& rq, const run_world& world) {
  quantize_report rep;
  stage_clock clock(rep.stage_seconds);
  const auto progress = [&](const std::string& stage) {
    return [&, stage](int64_t done, int64_t total) {
      if (rq.progress) rq.progress(stage, done, total);
    };
  };
  std::optional<checkpoint> source_file;
  model_spec spec;
  std::unique_ptr<causal_lm> model;
  const calibration_settings& cs = rq.rcp.calibration;
  int64_t seq_len = 0;
  std::vector<std::vector<int32_t>> sequences;
  world.stage([&] {
    if (!fs::is_directory(rq.model)) throw io_error(fmt::format("{}: model directory not found", rq.model.string()));
    require_separate_run_paths(rq.model, rq.out, rq.run_dir.empty() ? fs::path(rq.out.string() + ".run") : rq.run_dir,
                               rq.calib);
    if (fs::exists(rq.out) && !rq.overwrite)
      throw io_error(fmt::format("{}: already exists (pass --force to replace it once the new export is complete)",
                                 rq.out.string()));

    // plan: rules -> one decision per linear (no weights read)
    require_unquantized_checkpoint(rq.model, read_hf_config(rq.model));
    source_file = checkpoint::open(rq.model);
    spec = model_spec_from_file(rq.model);
    rep.plan = plan_quantization(rq.rcp, spec);
    if (!rq.rcp.search.enabled) require_a_quantized_linear_for_the_kv_cache(rep.plan, rq.rcp);
    rep.weights = held_layers(rq.rcp, rq.weights);
    if (rq.rcp.search.enabled)  // an unreachable budget is told now, not after calibration and scoring
      require_reachable_budget(make_search_space(spec, rq.rcp.search), spec, rq.rcp.search, rq.rcp.origin);
    std::vector<std::pair<std::string, std::vector<int64_t>>> present;
    std::vector<std::string> files;  // each tensor's file, named in the messages
    for (const auto& e : source_file->tensors()) {
      present.emplace_back(e.tensor->name, e.tensor->shape);
      files.push_back(e.shard->path().filename().string());
    }
    const std::vector<std::string> problems = check_against_tensors(spec, present, files);
    if (!problems.empty())
      throw io_error(fmt::format("{}: the checkpoint does not match its config.json: {}{}", rq.model.string(),
                                 problems.front(), problems.size() > 1 ? fmt::format(" (and {} more)", problems.size() - 1) : ""));

    // calibration tokens
    model = load_causal_lm(rq.model, {}, rep.weights);
    const fs::path data = !rq.calib.empty() ? rq.calib : fs::path(cs.data);
    rep.calib_source = data.empty() ? "built-in" : data.string();
    const int64_t enough = cs.samples * std::min(cs.seq_len, model->max_positions());  // (windows from the start)
    const std::vector<int32_t> tokens =
        data.empty() ? builtin_calibration_tokens(rq.model, spec.dims.vocab)
                     : read_token_stream(data, rq.model, spec.dims.vocab, token_dtype::from_extension, enough);
    const auto too_long = [&](const char* what, int64_t n) {
      return io_error(fmt::format("{} {} is more than {} allows: max_position_embeddings is {} in {}", what, n,
                                  rq.model.string(), model->max_positions(), spec.origin));
    };
    if (rq.seq_len_explicit && cs.seq_len > model->max_positions()) throw too_long("calibration seq_len", cs.seq_len);
    if (rq.eval_ctx > model->max_positions()) throw too_long("evaluation window (eval ctx)", rq.eval_ctx);
    seq_len = std::min(cs.seq_len, model->max_positions());
    sequences = split_sequences(tokens, cs.samples, seq_len);
    if (sequences.empty())
      throw io_error(fmt::format("{}: {} tokens are too few to calibrate on", rep.calib_source, tokens.size()));
  });
  const checkpoint& source = *source_file;
  rep.run_dir = rq.run_dir.empty() ? fs::path(rq.out.string() + ".run") : rq.run_dir;
  world.stage([&] { clock.log = run_log(rep.run_dir, world); });
  clock.log.info("mixq {}: quantize --model {} --recipe {} --out {}", rq.producer_version, rq.model.string(),
                 rq.rcp.origin, rq.out.string());
  if (world.size() > 1)
    clock.log.info("process {} of {} (started by {}): calibration and scoring sequences, weights and perplexity "
                   "windows i with i mod {} = {}", world.rank(), world.size(), run_world::launcher(), world.size(),
                   world.rank());
  clock.done("load");
  try {
    quantize_loaded(rq, world, rep, clock, source, spec, std::move(model), sequences, seq_len, progress);
  } catch (const run_failed& e) {
    clock.log.error(e.rank() >= 0 && world.size() > 1 ? fmt::format("process {} failed: {}", e.rank(), e.what())
                                                      : std::string(e.what()));
    throw;
  } catch (const std::exception& e) {
    clock.log.error(e.what());
    throw;
  }
  clock.log.info("done: wrote {}", rq.out.string());
  return rep;
}

}  // namespace mixq
