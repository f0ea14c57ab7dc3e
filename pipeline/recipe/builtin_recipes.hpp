// The shipped recipes (recipes/*.yaml) as text compiled into the binary; pipeline/CMakeLists.txt
// generates the table at configure time.
#pragma once

#include <span>
#include <string_view>

namespace mixq {

struct builtin_recipe {
  std::string_view name;  // the file stem: "mamba_moe_fp8_aggressive"
  std::string_view text;  // the YAML
};

std::span<const builtin_recipe> builtin_recipes();

}  // namespace mixq
