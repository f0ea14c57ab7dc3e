// Whole-file writes that a reader never sees half done: a temporary file beside the target, renamed
// over it once complete.
#pragma once

#include <filesystem>
#include <string_view>

namespace mixq {

// Throws std::runtime_error naming `path` when the file cannot be written.
void write_file_atomically(const std::filesystem::path& path, std::string_view contents);

}  // namespace mixq
