// Where recipes come from: a YAML file on disk, or a built-in recipe by name.
#include <algorithm>
#include <fstream>
#include <iterator>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/recipe/builtin_recipes.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {

std::vector<std::string> builtin_recipe_names() {
  std::vector<std::string> names;
  for (const builtin_recipe& b : builtin_recipes()) names.emplace_back(b.name);
  std::sort(names.begin(), names.end());
  return names;
}

recipe load_recipe(std::string_view path_or_name) {
  const std::filesystem::path path{std::string(path_or_name)};
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw io_error(fmt::format("{}: cannot read the recipe", path.string()));
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    return parse_recipe(text, path.string());
  }
  std::string_view name = path_or_name;
  if (name.ends_with(".yaml")) name.remove_suffix(5);
  for (const builtin_recipe& b : builtin_recipes())
    if (b.name == name) return parse_recipe(b.text, fmt::format("built-in:{}", b.name));
  throw io_error(fmt::format("recipe '{}' is neither a file nor a built-in recipe (built-in: {})", path_or_name,
                             fmt::join(builtin_recipe_names(), ", ")));
}

}  // namespace mixq
