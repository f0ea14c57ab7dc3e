// mixq formats: the traits table, as a person reads it; with --recipes, the built-in recipes.
#include <memory>

#include <fmt/format.h>

#include "formats/format_traits.hpp"
#include "pipeline/cli/commands.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq::cli {
namespace {

void print_formats() {
  fmt::print("{:<16} {:>5} {:>6} {:>7} {:>7} {:>9}  {}\n", "format", "bits", "block", "scale", "global", "eff.bits",
             "what");
  const char* scale_names[] = {"-", "f32", "e4m3", "e8m0", "f16"};
  for (const auto& f : all_formats())
    fmt::print("{:<16} {:>5} {:>6} {:>7} {:>7} {:>9.2f}  {}\n", f.name, f.element_bits,
               f.block_size ? std::to_string(f.block_size) : "-", scale_names[int(f.block_scale)],
               f.global_scale ? "f32" : "-", f.effective_bits, f.summary);
}

// Each built-in recipe with the first sentence of its description.
void print_recipes() {
  for (const std::string& name : builtin_recipe_names()) {
    const recipe r = load_recipe(name);
    std::string first = r.description.substr(0, r.description.find(". ") + 1);
    if (first.size() > 110) first = first.substr(0, 107) + "...";
    fmt::print("{:<34} {}\n", name, first);
  }
  fmt::print("\n(mixq quantize --recipe NAME; the YAML is in recipes/NAME.yaml, the schema in recipes/README.md)\n");
}

}  // namespace

void add_formats_command(CLI::App& app) {
  auto recipes = std::make_shared<bool>(false);
  auto* cmd = app.add_subcommand("formats", "List the quantization formats: bits, block, scales, effective bits");
  cmd->add_flag("--recipes", *recipes, "list the built-in recipes instead");
  cmd->callback([recipes] { *recipes ? print_recipes() : print_formats(); });
}

}  // namespace mixq::cli
