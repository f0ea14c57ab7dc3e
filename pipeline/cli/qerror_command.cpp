// mixq qerror: how much each format and scale selector perturbs each weight (MSE, SNR), on a
// checkpoint or on the built-in tensor set; no calibration data involved.
#include <algorithm>
#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <optional>
#include <string>
#include <unistd.h>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "formats/error_metrics.hpp"
#include "kernels/cpu/quantize.hpp"
#include "pipeline/cli/commands.hpp"
#include "pipeline/model/hf_config.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/synth_weights.hpp"

namespace mixq::cli {
namespace {

const char* kDefaultSpecs =
    "bf16,fp8/max,fp8/mse,fp8_per_channel/max,nvfp4/max,nvfp4/mse_multiplier,nvfp4/mse,nvfp4/four_over_six,"
    "nvfp4/mse+four_over_six,mxfp4,mxfp8,nf4";

std::optional<nvfp4_selector> parse_nvfp4_selector(std::string_view s) {
  for (auto sel : {nvfp4_selector::max, nvfp4_selector::mse_multiplier, nvfp4_selector::mse_fp8_sweep,
                   nvfp4_selector::four_over_six, nvfp4_selector::mse_four_over_six})
    if (selector_name(sel) == s) return sel;
  return std::nullopt;
}

// option: the one that gave text, named in the errors.
weight_quant_spec parse_spec(const std::string& text, const char* option = "--formats") {
  const auto slash = text.find('/');
  const std::string fmt_name = text.substr(0, slash);
  const std::string sel = slash == std::string::npos ? "" : text.substr(slash + 1);
  const auto f = parse_format(fmt_name);
  if (!f) {
    std::string known;
    for (const auto& t : all_formats()) known += std::string(known.empty() ? "" : ", ") + std::string(t.name);
    throw CLI::ValidationError(option, fmt::format("unknown format '{}' (known: {})", fmt_name, known));
  }
  weight_quant_spec spec;
  spec.format = *f;
  const element_kind e = traits_of(*f).element;
  if (sel.empty()) return spec;
  if (e == element_kind::e2m1 && traits_of(*f).block_size == 16) {
    const auto s = parse_nvfp4_selector(sel);
    if (!s) throw CLI::ValidationError(option, fmt::format("'{}': NVFP4 selectors are max, mse, mse_multiplier, four_over_six, mse+four_over_six", text));
    spec.nvfp4 = *s;
  } else if (e == element_kind::e4m3 && traits_of(*f).block_size == 0) {
    if (sel != "max" && sel != "mse") throw CLI::ValidationError(option, fmt::format("'{}': FP8 selectors are max, mse", text));
    spec.fp8 = sel == "max" ? fp8_selector::max : fp8_selector::mse;
  } else {
    throw CLI::ValidationError(option, fmt::format("'{}': {} has no scale selectors", text, fmt_name));
  }
  return spec;
}

struct tensor_result {
  std::string spec;
  std::optional<std::string> unavailable;  // why the format cannot hold this tensor
  error_stats err;
  double seconds = 0;
};

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

struct options {
  std::string model;
  std::string formats = kDefaultSpecs;
  std::string json_path;
  std::string baseline = "nvfp4/max";
  bool per_tensor = false;
  bool allow_nonfinite = false;
};

void run(const options& o) {
  std::vector<weight_quant_spec> specs;
  for (size_t p = 0; p <= o.formats.size();) {
    const size_t q = std::min(o.formats.find(',', p), o.formats.size());
    if (q > p) specs.push_back(parse_spec(o.formats.substr(p, q - p)));
    p = q + 1;
  }
  for (auto& s : specs) s.nonfinite = o.allow_nonfinite ? nonfinite_policy::zero : nonfinite_policy::reject;
  const std::string baseline = describe(parse_spec(o.baseline, "--baseline"));
  if (std::none_of(specs.begin(), specs.end(), [&](const weight_quant_spec& s) { return describe(s) == baseline; }))
    throw std::runtime_error(fmt::format("--baseline {} is not among --formats {}: the MSE ratios are relative to "
                                         "one of them", o.baseline, o.formats));

  // The weights: a checkpoint's 2-D float tensors, or the built-in set.
  std::optional<checkpoint> ckpt;
  std::vector<synth_weight> builtin;
  std::vector<cpu::source_matrix> weights;
  std::string source_name;
  if (!o.model.empty()) {
    require_unquantized_checkpoint(o.model, read_hf_config(o.model));  // (its scales are no weights)
    ckpt = checkpoint::open(o.model);
    for (const auto& e : ckpt->tensors())
      if (auto m = checkpoint::as_matrix(e)) weights.push_back(*m);
    source_name = o.model;
  } else {
    builtin = synth_builtin_tensor_set();
    for (const auto& w : builtin) weights.push_back({w.bf16.data(), cpu::source_dtype::bf16, w.rows, w.cols, w.name});
    source_name = "built-in tensor set (synthetic BF16: Gaussian, Student-t, outlier channels)";
  }
  if (weights.empty()) throw std::runtime_error(fmt::format("{}: no 2-D BF16/F16/F32 tensors to quantize", source_name));

  const bool tty = isatty(STDERR_FILENO);
  std::vector<std::vector<tensor_result>> results(weights.size());
  int64_t params = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& w = weights[i];
    params += w.size();
    if (tty) fmt::print(stderr, "\r[{}/{}] {:<60.60}", i + 1, weights.size(), w.name);
    std::vector<float> ref(size_t(w.size())), out(size_t(w.size()));
    cpu::load_f32(w, 0, int(w.size()), ref.data(), o.allow_nonfinite);
    for (const auto& spec : specs) {
      tensor_result r;
      r.spec = describe(spec);
      r.unavailable = format_cannot_hold(spec.format, w.rows, w.cols);
      if (!r.unavailable) {
        const auto t0 = std::chrono::steady_clock::now();
        cpu::fake_quant_weight(w, spec, out);
        r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        r.err = error_between(ref, out);
      }
      results[i].push_back(std::move(r));
    }
  }
  if (tty) fmt::print(stderr, "\r{:<80}\r", "");

  fmt::print("mixq qerror: {} tensors, {} parameters, from {}\n", weights.size(), params, source_name);
  fmt::print("threads: {}; MSE ratio = median over tensors of MSE / MSE({})\n\n", omp_get_max_threads(), o.baseline);
  size_t base = specs.size();
  for (size_t s = 0; s < specs.size(); ++s)
    if (describe(specs[s]) == baseline) base = s;

  if (o.per_tensor) {
    fmt::print("{:<48} {:>11}", "tensor (SNR dB)", "shape");
    for (const auto& s : specs) fmt::print(" {:>10.10}", describe(s));
    fmt::print("\n");
    for (size_t i = 0; i < weights.size(); ++i) {
      fmt::print("{:<48.48} {:>11}", weights[i].name, fmt::format("{}x{}", weights[i].rows, weights[i].cols));
      for (const auto& r : results[i]) r.unavailable ? fmt::print(" {:>10}", "n/a") : fmt::print(" {:>10.2f}", r.err.snr_db);
      fmt::print("\n");
    }
    fmt::print("\n");
  }

  fmt::print("{:<26} {:>8} {:>10} {:>10} {:>10} {:>11} {:>9} {:>9}\n", "format/selector", "eff.bits", "median SNR",
             "worst SNR", "MSE ratio", "unavailable", "time ms", "MB/s");
  nlohmann::json report = {{"source", source_name}, {"baseline", o.baseline}, {"specs", nlohmann::json::array()}};
  std::map<std::string, std::vector<std::string>> unavailable_reasons;  // format -> distinct reasons
  std::map<std::string, std::set<std::string>> unavailable_tensors;    // format -> tensors
  for (size_t s = 0; s < specs.size(); ++s) {
    std::vector<double> snr, ratio;
    double worst = INFINITY, seconds = 0, bytes = 0;
    int unavailable = 0;
    nlohmann::json per_tensor = nlohmann::json::array();
    for (size_t i = 0; i < weights.size(); ++i) {
      const tensor_result& r = results[i][s];
      if (r.unavailable) {
        ++unavailable;
        auto& reasons = unavailable_reasons[std::string(traits_of(specs[s].format).name)];
        if (std::find(reasons.begin(), reasons.end(), *r.unavailable) == reasons.end()) reasons.push_back(*r.unavailable);
        unavailable_tensors[std::string(traits_of(specs[s].format).name)].insert(std::string(weights[i].name));
        per_tensor.push_back({{"tensor", std::string(weights[i].name)}, {"unavailable", *r.unavailable}});
        continue;
      }
      snr.push_back(r.err.snr_db);
      worst = std::min(worst, r.err.snr_db);
      seconds += r.seconds;
      bytes += double(weights[i].size()) * (weights[i].dtype == cpu::source_dtype::f32 ? 4 : 2);
      if (base < specs.size() && !results[i][base].unavailable && results[i][base].err.mse > 0)
        ratio.push_back(r.err.mse / results[i][base].err.mse);
      per_tensor.push_back({{"tensor", std::string(weights[i].name)}, {"mse", r.err.mse}, {"snr_db", r.err.snr_db},
                            {"max_abs", r.err.max_abs}, {"seconds", r.seconds}});
    }
    const std::string name = describe(specs[s]);
    fmt::print("{:<26} {:>8.2f} {:>10.2f} {:>10.2f} {:>10.4f} {:>11} {:>9.1f} {:>9.0f}\n", name,
               traits_of(specs[s].format).effective_bits, median(snr), worst, median(ratio), unavailable,
               seconds * 1e3, seconds > 0 ? bytes / seconds / 1e6 : 0.0);
    report["specs"].push_back({{"spec", name}, {"effective_bits", traits_of(specs[s].format).effective_bits},
                               {"median_snr_db", median(snr)}, {"median_mse_ratio", median(ratio)},
                               {"unavailable", unavailable}, {"tensors", per_tensor}});
  }
  for (const auto& [format, reasons] : unavailable_reasons) {
    const auto& tensors = unavailable_tensors[format];
    fmt::print("\n{} is unavailable for {} tensor(s) ({}{}): {}\n", format, tensors.size(), *tensors.begin(),
               tensors.size() > 1 ? ", ..." : "", fmt::join(reasons, "; "));
  }
  if (!o.json_path.empty()) {
    std::ofstream(o.json_path) << report.dump(2) << "\n";
    fmt::print("\nper-tensor results: {}\n", o.json_path);
  }
}

}  // namespace

void add_qerror_command(CLI::App& app) {
  auto o = std::make_shared<options>();
  auto* cmd = app.add_subcommand("qerror",
                                 "Quantization error of every weight under each format / scale selector (no data needed)");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint directory (default: the built-in tensor set)");
  cmd->add_option("--formats", o->formats,
                  "Comma-separated format[/selector] list. NVFP4 selectors: max, mse (exhaustive FP8 scale sweep), "
                  "mse_multiplier, four_over_six, mse+four_over_six; FP8: max, mse")
      ->default_str(kDefaultSpecs);
  cmd->add_option("--baseline", o->baseline, "Spec the MSE ratio is relative to")->default_str("nvfp4/max");
  cmd->add_option("--json", o->json_path, "Write per-tensor results to this JSON file");
  cmd->add_flag("--per-tensor", o->per_tensor, "Print the SNR of every tensor under every spec");
  cmd->add_flag("--allow-nonfinite", o->allow_nonfinite, "Quantize NaN / Inf weights as 0 instead of refusing");
  cmd->callback([o] { run(*o); });
}

}  // namespace mixq::cli
