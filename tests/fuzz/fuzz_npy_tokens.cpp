// libFuzzer target for the .npy token reader: any input must either give ids (each a valid int32
// id) or throw token_file_error; any other exception, crash, hang, leak or UB is a bug.
#include <cstdint>
#include <string_view>

#include "calib/npy_tokens.hpp"
#include "calib/token_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    for (int32_t id : mixq::parse_npy_tokens(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz", 0))
      if (id < 0) __builtin_trap();
  } catch (const mixq::token_file_error&) {
  }
  return 0;
}
