// libFuzzer target for the safetensors header parser. Input: 8 bytes giving the data-buffer size
// (mod 1 MiB), then the header text. The parser must either accept or throw io_error: any other
// exception, crash, leak or out-of-bounds access (ASan / UBSan) is a bug.
#include <cstdint>
#include <cstring>
#include <string_view>

#include "pipeline/io/safetensors_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t data_size = 0;
  std::memcpy(&data_size, data, 8);
  data_size %= uint64_t(1) << 20;
  try {
    mixq::safetensors_metadata metadata;
    const auto tensors = mixq::parse_safetensors_header(
        std::string_view(reinterpret_cast<const char*>(data) + 8, size - 8), data_size, "fuzz", &metadata);
    // Accepted headers describe a fully indexed buffer.
    uint64_t end = 0;
    for (const auto& t : tensors) end = t.end > end ? t.end : end;
    if (end != data_size) __builtin_trap();
  } catch (const mixq::io_error&) {
  }
  return 0;
}
