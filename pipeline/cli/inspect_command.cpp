// mixq inspect DIR: architecture, parameters, dtypes, size, and for quantized exports the format of
// every linear, the effective bits and the checks the inference runtimes depend on.
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "pipeline/cli/commands.hpp"
#include "pipeline/report/number_text.hpp"
#include "pipeline/inspect/checkpoint_inspection.hpp"

namespace mixq::cli {
namespace {

void print(const checkpoint_inspection& r, bool list_layers) {
  fmt::print("checkpoint:   {}\n", r.dir.string());
  fmt::print("architecture: {}\n", r.architecture);
  fmt::print("tensors:      {} in {} file(s), {} on disk\n", r.tensors, r.files, bytes_text(double(r.file_bytes)));
  fmt::print("parameters:   {} ({:.1f} M); as BF16 {}: this checkpoint is {:.2f}x that\n", r.parameters,
             double(r.parameters) / 1e6, bytes_text(2.0 * double(r.parameters)),
             double(r.file_bytes) / (2.0 * double(r.parameters)));
  fmt::print("dtypes:      ");
  for (const auto& [d, b] : r.bytes_by_dtype) fmt::print(" {} {}", d, bytes_text(double(b)));
  if (r.layout.empty()) fmt::print("\nquantization: none");
  else fmt::print("\nquantization: {} {}", r.layout, r.quant_algo);
  if (!r.kv_cache_quant_algo.empty()) fmt::print(", KV cache {}", r.kv_cache_quant_algo);
  fmt::print("\nlinears:      {} —", r.linears.size());
  for (const auto& [f, n] : r.linears_by_format()) fmt::print(" {} {}", f, n);
  fmt::print("; effective bits {:.2f}\n", r.effective_bits);
  if (list_layers) {
    fmt::print("\n{:<64} {:>16} {:>12}\n", "module", "format", "shape");
    for (const auto& l : r.linears)
      fmt::print("{:<64} {:>16} {:>12}\n", l.module, stored_format_name(l.format), fmt::format("{}x{}", l.rows, l.cols));
  }
  for (const auto& n : r.notes) fmt::print("note: {}\n", n);
  if (r.problems.empty() && !r.layout.empty())
    fmt::print("checks:       passed at --tp {} (scales finite and positive, fused siblings and MoE experts agree, "
               "NVFP4 slices hold 16-blocks, activation and KV scales present{})\n",
               r.tensor_parallel, r.config_checked ? ", config matches tensors" : "; no config.json mixq knows: "
                                                                                 "linears found by shape");
  else if (r.problems.empty() && r.config_checked)
    fmt::print("checks:       passed (tensors match config.json)\n");
  else if (r.problems.empty())
    fmt::print("checks:       none against a config (no config.json mixq knows); headers read\n");
  for (const auto& p : r.problems) fmt::print("PROBLEM: {}\n", p);
}

}  // namespace

void add_inspect_command(CLI::App& app) {
  struct options {
    std::string dir, json_path;
    bool layers = false;
    int tp = 1;
  };
  auto o = std::make_shared<options>();
  auto* cmd = app.add_subcommand("inspect", "Describe a checkpoint and check a quantized export the way the runtimes will");
  cmd->add_option("dir", o->dir, "Hugging Face checkpoint directory")->required();
  cmd->add_flag("--layers", o->layers, "List every linear with its format");
  cmd->add_option("--tp", o->tp, "Check NVFP4 linears for this tensor-parallel degree (default 1)")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--json", o->json_path, "Also write the findings to this JSON file");
  cmd->callback([o] {
    const checkpoint_inspection r = inspect_checkpoint(o->dir, {.tensor_parallel = o->tp});
    print(r, o->layers);
    if (!o->json_path.empty()) {
      nlohmann::json j = {{"dir", r.dir.string()},
                          {"architecture", r.architecture},
                          {"parameters", r.parameters},
                          {"file_bytes", r.file_bytes},
                          {"layout", r.layout},
                          {"quant_algo", r.quant_algo},
                          {"kv_cache_quant_algo", r.kv_cache_quant_algo},
                          {"tensor_parallel", r.tensor_parallel},
                          {"linears_by_format", r.linears_by_format()},
                          {"effective_bits", r.effective_bits},
                          {"problems", r.problems},
                          {"notes", r.notes},
                          {"linears", nlohmann::json::array()}};
      for (const auto& l : r.linears)
        j["linears"].push_back({{"module", l.module}, {"format", stored_format_name(l.format)}, {"rows", l.rows},
                                {"cols", l.cols}, {"input_scale", l.input_scale}});
      std::ofstream f(o->json_path);
      f << j.dump(2) << "\n";
      f.flush();
      if (!f) throw std::runtime_error(fmt::format("{}: cannot write the findings (--json)", o->json_path));
    }
    if (!r.problems.empty()) throw std::runtime_error(fmt::format("{}: {} problem(s) found", o->dir, r.problems.size()));
  });
}

}  // namespace mixq::cli
