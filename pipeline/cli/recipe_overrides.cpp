// quantize and plan: the options that override a recipe's fields, so that a plan describes the run
// the same command line would make.
#include <fmt/format.h>

#include "pipeline/cli/commands.hpp"

namespace mixq::cli {

void add_recipe_overrides(CLI::App& cmd, recipe_overrides& o) {
  cmd.add_option("--samples", o.samples, "calibration sequences; overrides the recipe")
      ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
  cmd.add_option("--seq-len", o.seq_len,
                 "tokens per calibration sequence, at most max_position_embeddings; overrides the recipe")
      ->check(CLI::Range(int64_t(2), int64_t(1) << 30));
  cmd.add_option("--effective-bits", o.effective_bits,
                 "the search budget; overrides the recipe's search.effective_bits (with quantize --resume: "
                 "re-solves from the stored scores, no scoring pass); above 0, at most 16")
      ->check([](const std::string& v) {
        double b = 0.0;
        return CLI::detail::lexical_cast(v, b) && b > 0.0 && b <= 16.0
                   ? std::string()
                   : fmt::format("{} is not a budget: effective bits are above 0 and at most 16", v);
      });
  cmd.add_option("--layout", o.layout, "modelopt or compressed-tensors; overrides the recipe")
      ->check(CLI::IsMember({"modelopt", "compressed-tensors"}));
}

void apply_recipe_overrides(const recipe_overrides& o, recipe& r) {
  if (o.samples > 0) r.calibration.samples = o.samples;
  if (o.seq_len > 0) r.calibration.seq_len = o.seq_len;
  if (o.effective_bits > 0.0) {
    if (!r.search.enabled)
      throw std::runtime_error(
          fmt::format("--effective-bits needs a recipe with a search: section; {} has fixed rules", r.origin));
    r.search.effective_bits = o.effective_bits;
  }
  if (o.layout == "modelopt") r.output.layout = export_layout::modelopt;
  if (o.layout == "compressed-tensors") r.output.layout = export_layout::compressed_tensors;
}

}  // namespace mixq::cli
