// mixq formats: the traits table, as a person reads it.
#include <fmt/format.h>

#include "formats/format_traits.hpp"
#include "pipeline/cli/commands.hpp"

namespace mixq::cli {

void add_formats_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("formats", "List the quantization formats: bits, block, scales, effective bits");
  cmd->callback([] {
    fmt::print("{:<16} {:>5} {:>6} {:>7} {:>7} {:>9}  {}\n", "format", "bits", "block", "scale", "global", "eff.bits",
               "what");
    const char* scale_names[] = {"-", "f32", "e4m3", "e8m0", "f16"};
    for (const auto& f : all_formats())
      fmt::print("{:<16} {:>5} {:>6} {:>7} {:>7} {:>9.2f}  {}\n", f.name, f.element_bits,
                 f.block_size ? std::to_string(f.block_size) : "-", scale_names[int(f.block_scale)],
                 f.global_scale ? "f32" : "-", f.effective_bits, f.summary);
  });
}

}  // namespace mixq::cli
