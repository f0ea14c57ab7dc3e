// mixq synth: writes a deterministic synthetic checkpoint in Hugging Face layout, for tests,
// benchmarks and scale runs where a real checkpoint is missing or too big.
#include <string>

#include <fmt/format.h>

#include "pipeline/cli/commands.hpp"
#include "pipeline/synth/synth_checkpoint.hpp"

namespace mixq::cli {
namespace {

constexpr const char* kDescription =
    "Write a synthetic checkpoint in exact Hugging Face layout: config.json, generation_config.json and\n"
    "model.safetensors (or model-0000i-of-0000n.safetensors shards + model.safetensors.index.json).\n"
    "ModelSpec derives the tensor list from the generated config.json, so config and tensors always agree\n"
    "and `mixq inspect` checks them tensor by tensor.\n\n"
    "Presets (vocab >= 512, so the shared tok512 tokenizer fits):\n"
    "  tiny   hidden 64, 2-6 layers covering every block kind (nemotron_h: M * E - plus an MTP head),\n"
    "         4-8 experts; well under 1 MB, made in milliseconds. For tests.\n"
    "  small  the real structure at 124-179 M parameters (250-360 MB as BF16, ~4 s on 2 cores), every K\n"
    "         a multiple of 16 so NVFP4 applies. nemotron_h: Super-style hybrid MEMEM*EMEMEM*EMEME + MTP *E,\n"
    "         hidden 768, 64 experts (top-6) in a 192-wide latent + shared expert. For benchmarks, scale tests.\n\n"
    "Values look trained: linears fan-in scaled (1/sqrt(K)), Gaussian with Student-t tails on output\n"
    "projections and a few 8-32x input channels on projections reading the residual stream; routers 4x\n"
    "smaller; norm weights 1 +- 0.02; embeddings N(0, 0.02); Mamba A_log = log U(1,16), D ~ 1,\n"
    "dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 1e-1]. A_log, D, dt_bias and\n"
    "e_score_correction_bias stay F32, as in real checkpoints. Each tensor is seeded from (--seed, its\n"
    "name): the same seed gives byte-identical files whatever OMP_NUM_THREADS is.\n\n"
    "The checkpoint is written into a hidden sibling directory and renamed to --out when complete.";

constexpr const char* kExamples =
    "Examples:\n"
    "  mixq synth --arch nemotron_h --preset tiny --out /tmp/nh-tiny\n"
    "  mixq synth --arch qwen3_moe --preset small --seed 7 --max-shard-size 100MB --out /tmp/qwen3-small\n"
    "  mixq inspect /tmp/nh-tiny          # tensors checked against config.json";

std::string megabytes(uint64_t bytes) { return fmt::format("{:.1f} MB", double(bytes) / 1e6); }

}  // namespace

void add_synth_command(CLI::App& app) {
  struct options {
    std::string arch, preset = "tiny", dtype_name = "bf16", max_shard_size = "5GB", out;
    uint64_t seed = 0;
    bool force = false;
  };
  auto o = std::make_shared<options>();
  auto* cmd = app.add_subcommand("synth", "Write a deterministic synthetic checkpoint (llama, mixtral, qwen3_moe, "
                                          "nemotron_h) in Hugging Face layout");
  cmd->description(kDescription);
  cmd->footer(kExamples);
  cmd->add_option("--arch", o->arch, "Architecture")
      ->required()
      ->check(CLI::IsMember({"llama", "mixtral", "qwen3_moe", "nemotron_h"}));
  cmd->add_option("--preset", o->preset, "tiny (tests) or small (benchmarks, a few hundred MB)")
      ->check(CLI::IsMember({"tiny", "small"}))
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of every weight; a different seed gives different weights")
      ->check([](const std::string& v) {  // (a negative or too large number would wrap around)
        return !v.empty() && v.size() <= 20 && v.find_first_not_of("0123456789") == std::string::npos &&
                       (v.size() < 20 || v <= "18446744073709551615")
                   ? std::string()
                   : fmt::format("{} is not a seed: 0 to 18446744073709551615", v);
      })
      ->capture_default_str();
  cmd->add_option("--dtype", o->dtype_name, "Storage type of the weights")
      ->check(CLI::IsMember({"bf16", "f16", "f32"}))
      ->capture_default_str();
  cmd->add_option("--max-shard-size", o->max_shard_size,
                  "Split into shards + index above this size (5GB = 5e9 bytes; also KB, MB, KiB, MiB, GiB, bytes)")
      ->check([](const std::string& s) {
        return parse_byte_size(s) ? std::string() : fmt::format("'{}' is not a size such as 5GB, 500MB or 4GiB", s);
      })
      ->capture_default_str();
  cmd->add_option("--out", o->out, "Directory to create (must not exist or be empty)")->required();
  cmd->add_flag("--force", o->force, "Replace --out even if it is not empty (the old contents are deleted)");
  cmd->callback([o] {
    synth_options s;
    s.arch = *parse_synth_arch(o->arch);
    s.preset = *parse_synth_preset(o->preset);
    s.seed = o->seed;
    s.type = o->dtype_name == "bf16" ? dtype::bf16 : o->dtype_name == "f16" ? dtype::f16 : dtype::f32;
    s.max_shard_bytes = *parse_byte_size(o->max_shard_size);
    s.out = o->out;
    s.force = o->force;
    const synth_result r = synth_checkpoint(s);
    fmt::print("synth: {} {} (seed {}, {}): {:.1f} M parameters, {} in {} files -> {} ({:.2f} s)\n", o->arch, o->preset,
               o->seed, o->dtype_name, double(r.parameters) / 1e6, megabytes(r.tensor_bytes), r.files.size(),
               r.dir.string(), r.seconds);
  });
}

}  // namespace mixq::cli
