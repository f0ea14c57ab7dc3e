// mixq: post-training quantization of LLM checkpoints to NVFP4 / FP8 / BF16.
#include <cstdio>
#include <cstring>
#include <exception>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "pipeline/cli/commands.hpp"
#include "pipeline/model/allocator_tuning.hpp"
#include "pipeline/parallel/run_world.hpp"

#ifndef MIXQ_VERSION
#define MIXQ_VERSION "unknown"
#endif

namespace {

// The subcommand argv names: its first word that is not an option.
std::string subcommand_of(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (argv[i][0] != '-') return argv[i];
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  mixq::keep_buffers_in_heap();
  try {
    mixq::run_world::start(argc, argv);
  } catch (const std::exception& e) {
    fmt::print(stderr, "mixq: error: {}\n", e.what());
    return 1;
  }
  const mixq::run_world& world = mixq::run_world::get();
  const std::string command = subcommand_of(argc, argv);
  if (world.size() > 1 && command != "quantize" && command != "eval") {
    if (world.root())
      fmt::print(stderr, "mixq: error: only `mixq quantize` and `mixq eval` run across processes ({} started {}); "
                 "run `mixq {}` without it\n", mixq::run_world::launcher(), world.size(), command);
    return 2;
  }
  if (world.size() > 1) {  // (the processes exchange what their options make: they must be the same options)
    std::string words;
    for (int i = 1; i < argc; ++i) words.append(argv[i]).push_back('\0');
    const std::vector<std::string> all = world.all_gather(words);
    for (size_t r = 1; r < all.size(); ++r)
      if (all[r] != all[0]) {
        if (world.root())
          fmt::print(stderr, "mixq: error: process {} was started with other arguments than process 0; every process "
                     "of a run ({} started {}) takes the same command line\n", r, mixq::run_world::launcher(),
                     world.size());
        return 2;
      }
  }
  CLI::App app{
      "mixq: post-training quantization and mixed-precision search for LLM checkpoints.\n"
      "Quantizes Hugging Face checkpoints per layer to NVFP4 / FP8 / BF16 (plus MXFP4, MXFP8, NF4),\n"
      "with max, MSE and four-over-six block-scale selection.\n\n"
      "Start with:  mixq formats          the formats and what they cost\n"
      "             mixq quantize --model ../shared/models/stories260K --recipe llama_nvfp4 --out /tmp/s-nvfp4\n"
      "                                   calibrate, quantize, export (ModelOpt layout) and verify by re-loading\n"
      "             mixq quantize --model DIR --recipe auto_nvfp4_fp8_5p4bits --out OUT   search the formats under a bit budget\n"
      "             mixq plan --model DIR|config.json --recipe R   formats, export size and memory before a run\n"
      "             mixq report OUT.run   the search as HTML (sensitivity, assignment, front)\n"
      "             mixq inspect OUT      check an export the way vLLM will\n"
      "             mixq qerror           quantization error of every selector on a built-in tensor set\n"
      "             mixq qerror --model ../shared/models/stories260K\n"
      "             mixq synth --arch nemotron_h --out /tmp/nh   a synthetic checkpoint to try things on\n"
      "             mixq eval --model ../shared/models/stories260K --data ../shared/data/tinystories/TinyStories-valid-reduced.tok512.u16.bin   FP32 perplexity\n",
      "mixq"};
  app.set_version_flag("--version", std::string("mixq ") + MIXQ_VERSION);
  app.require_subcommand(1);
  mixq::cli::add_formats_command(app);
  mixq::cli::add_qerror_command(app);
  mixq::cli::add_inspect_command(app);
  mixq::cli::add_synth_command(app);
  mixq::cli::add_eval_command(app);
  mixq::cli::add_plan_command(app);
  mixq::cli::add_quantize_command(app);
  mixq::cli::add_report_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return world.root() ? app.exit(e) : e.get_exit_code();  // (every process parsed the same words)
  } catch (const mixq::run_failed& e) {  // every process has it: the root tells
    if (world.root())
      fmt::print(stderr, "mixq: error: {}{}\n", e.rank() >= 0 && world.size() > 1 ? fmt::format("rank {}: ", e.rank()) : "", e.what());
    return 1;
  } catch (const std::exception& e) {
    if (world.size() == 1) {
      fmt::print(stderr, "mixq: error: {}\n", e.what());
      return 1;
    }
    fmt::print(stderr, "mixq: error on rank {}: {}\n", world.rank(), e.what());
    world.abort(1);  // the others may be waiting for this one: stop them all
  }
  return 0;
}
