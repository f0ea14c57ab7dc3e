// The fingerprint half of calibration_stats.hpp: FNV-1a digests of what produced the statistics,
// and the sentence a refused --resume prints. Checkpoints are fingerprinted by their config, their
// shard headers and 256 samples of 4 KiB spread over each shard's tensor data (a fine-tuned or
// re-initialized checkpoint of the same shapes changes every sample), so a model of hundreds of GB
// costs about 1 MiB of reads per shard.
#include "calib/calibration_stats.hpp"

#include <algorithm>
#include <array>
#include <fstream>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace mixq {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kFnvPrime = 0x100000001b3ull;

uint64_t fnv1a(const void* data, size_t size, uint64_t state) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    state ^= p[i];
    state *= kFnvPrime;
  }
  return state;
}

// Fixed-width little-endian, so the digest does not depend on the host.
uint64_t fnv1a_u64(uint64_t v, uint64_t state) {
  std::array<unsigned char, 8> le{};
  for (size_t b = 0; b < le.size(); ++b) le[b] = static_cast<unsigned char>(v >> (8 * b));
  return fnv1a(le.data(), le.size(), state);
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw token_file_error(fmt::format("{}: cannot open", path.string()));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw token_file_error(fmt::format("{}: read error", path.string()));
  return bytes;
}

// Name, size, JSON header and data samples of one shard.
uint64_t hash_shard(const fs::path& shard, uint64_t state) {
  std::error_code ec;
  const uint64_t size = fs::file_size(shard, ec);
  if (ec) throw token_file_error(fmt::format("{}: cannot stat ({})", shard.string(), ec.message()));
  std::ifstream in(shard, std::ios::binary);
  if (!in) throw token_file_error(fmt::format("{}: cannot open", shard.string()));
  std::array<unsigned char, 8> len_bytes{};
  if (size < len_bytes.size() || !in.read(reinterpret_cast<char*>(len_bytes.data()), len_bytes.size()))
    throw token_file_error(fmt::format("{}: too short for a safetensors header length", shard.string()));
  uint64_t header_len = 0;
  for (size_t b = 0; b < len_bytes.size(); ++b) header_len |= uint64_t(len_bytes[b]) << (8 * b);
  if (header_len > size - len_bytes.size())
    throw token_file_error(fmt::format("{}: safetensors header of {} bytes does not fit a {}-byte file",
                                       shard.string(), header_len, size));
  std::string header(header_len, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(header_len)))
    throw token_file_error(fmt::format("{}: cannot read the safetensors header", shard.string()));

  const std::string name = shard.filename().string();
  state = fnv1a_u64(name.size(), state);  // length-prefixed, so name and size cannot run together
  state = fnv1a(name.data(), name.size(), state);
  state = fnv1a_u64(size, state);
  state = fnv1a(header.data(), header.size(), state);

  // the data's samples: evenly spaced, the first at its start and the last at its end
  constexpr uint64_t kSamples = 256, kSampleBytes = 4096;
  const uint64_t data_start = len_bytes.size() + header_len, data_size = size - data_start;
  const uint64_t chunk = std::min(kSampleBytes, data_size);
  const uint64_t samples = chunk == 0 ? 0 : std::min(kSamples, (data_size + chunk - 1) / chunk);
  std::vector<char> bytes(chunk);
  for (uint64_t i = 0; i < samples; ++i) {
    const uint64_t offset = data_start + (samples > 1 ? (data_size - chunk) * i / (samples - 1) : 0);
    if (!in.seekg(static_cast<std::streamoff>(offset)) || !in.read(bytes.data(), static_cast<std::streamsize>(chunk)))
      throw token_file_error(fmt::format("{}: cannot read tensor data at byte {}", shard.string(), offset));
    state = fnv1a(bytes.data(), bytes.size(), state);
  }
  return state;
}

}  // namespace

std::string fnv1a_hex(const void* data, size_t size, uint64_t seed) {
  return fmt::format("{:016x}", fnv1a(data, size, seed));
}

std::string model_fingerprint(const fs::path& model_dir) {
  const fs::path config = model_dir / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(config, ec))
    throw token_file_error(fmt::format("{}: not found (a model directory needs config.json)", config.string()));
  const std::string config_bytes = read_all(config);
  uint64_t state = fnv1a(config_bytes.data(), config_bytes.size(), 0xcbf29ce484222325ull);

  std::vector<fs::path> shards;
  for (fs::directory_iterator it(model_dir, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().extension() == ".safetensors" && it->is_regular_file(ec)) shards.push_back(it->path());
  if (ec) throw token_file_error(fmt::format("{}: cannot list ({})", model_dir.string(), ec.message()));
  std::sort(shards.begin(), shards.end(),
            [](const fs::path& a, const fs::path& b) { return a.filename() < b.filename(); });
  for (const fs::path& shard : shards) state = hash_shard(shard, state);
  return fmt::format("{:016x}", state);
}

std::string describe_fingerprint_mismatch(const stats_fingerprint& stored, const stats_fingerprint& wanted) {
  struct part {
    const char* what;   // as the sentence names it
    const char* label;  // as the detail names it
    const std::string& before;
    const std::string& now;
  };
  const std::array<part, 3> parts{{{"a different model", "model", stored.model, wanted.model},
                                   {"different calibration settings", "settings", stored.calibration,
                                    wanted.calibration},
                                   {"different calibration data", "data", stored.data, wanted.data}}};
  std::vector<std::string> whats, details;
  for (const part& p : parts) {
    if (p.before == p.now) continue;
    whats.emplace_back(p.what);
    details.push_back(fmt::format("stored {} {}, now {}", p.label, p.before, p.now));
  }
  if (whats.empty()) return "";
  std::string listed = whats.front();
  for (size_t i = 1; i < whats.size(); ++i) listed += (i + 1 == whats.size() ? " and " : ", ") + whats[i];
  return fmt::format(
      "the stored statistics were computed for {} ({}); rerun without --resume or point --run-dir elsewhere",
      listed, fmt::join(details, "; "));
}

}  // namespace mixq
