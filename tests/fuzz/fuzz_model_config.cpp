// libFuzzer target for the config.json -> ModelSpec builder. Any input must either give a spec whose
// tensor list is self-consistent, or throw io_error (bad JSON is rejected before, as config loading
// does): any other exception, crash, hang, leak or UB is a bug.
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "pipeline/io/safetensors_file.hpp"
#include "pipeline/model/model_spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto config = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded()) return 0;
  try {
    const mixq::model_spec spec = mixq::model_spec_from_config(config, "fuzz");
    // A spec built from a config must accept its own tensor list.
    if (!mixq::check_against_tensors(spec, mixq::expected_tensors(spec)).empty()) __builtin_trap();
    (void)mixq::parameter_count(spec);
  } catch (const mixq::io_error&) {
  }
  return 0;
}
