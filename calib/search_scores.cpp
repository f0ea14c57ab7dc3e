#include "calib/search_scores.hpp"

#include "calib/hdf5_support.hpp"

namespace mixq {

using namespace hdf5;  // NOLINT: this file is the HDF5 side of the scores

namespace {

constexpr std::string_view kFormat = "mixq-search-scores";
constexpr int64_t kVersion = 1;

void write_double_attribute(const h5_site& site, hid_t owner, const char* name, double value) {
  const std::string what = fmt::format("cannot write attribute '{}' of /", name);
  h5_id space(site.check(H5Screate(H5S_SCALAR), what), H5Sclose);
  h5_id attr(site.check(H5Acreate2(owner, name, H5T_IEEE_F64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), what),
             H5Aclose);
  site.check(H5Awrite(attr.get(), H5T_NATIVE_DOUBLE, &value), what);
}

double read_double_attribute(const h5_site& site, hid_t owner, const char* name) {
  h5_id attr = open_attribute(site, owner, "/", name);
  const std::string what = fmt::format("cannot read attribute '{}' of /", name);
  h5_id type(site.check(H5Aget_type(attr.get()), what), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_FLOAT) site.fail(fmt::format("attribute '{}' of / is not a number", name));
  double value = 0.0;
  site.check(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &value), what);
  return value;
}

}  // namespace

void write_search_scores(const std::filesystem::path& file, const search_scores_table& t) {
  const hdf5_quiet quiet;
  write_atomically(file.string(), [&](const h5_site& site, hid_t f) {
    write_string_attribute(site, f, "/", "format", kFormat);
    write_int_attribute(site, f, "version", kVersion);
    write_string_attribute(site, f, "/", "method", t.method);
    write_string_attribute(site, f, "/", "fingerprint", t.fingerprint);
    write_double_attribute(site, f, "budget_bits", t.budget_bits);
    write_double_attribute(site, f, "effective_bits", t.effective_bits);
    write_map(site, f, "format_bits", t.format_bits);
    write_map(site, f, "weights", t.weights);
    h5_id scores(site.check(H5Gcreate2(f, "scores", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), "cannot create group /scores"),
                 H5Gclose);
    for (const auto& [format, by_group] : t.scores) write_map(site, f, "scores/" + format, by_group);
    std::map<std::string, int64_t> chosen;
    for (const auto& [group, format] : t.chosen) {
      const auto it = t.format_bits.find(format);
      if (it == t.format_bits.end()) site.fail(fmt::format("group {} chose '{}', not a listed format", group, format));
      chosen[group] = std::distance(t.format_bits.begin(), it);
    }
    write_map(site, f, "chosen", chosen);
  });
}

search_scores_table read_search_scores(const std::filesystem::path& file) {
  const hdf5_quiet quiet;
  const h5_site site{file.string()};
  h5_id f(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (f.get() < 0) site.fail(fmt::format("not a readable HDF5 file{}", hdf5_reason()));
  if (read_string_attribute(site, f.get(), "/", "format") != kFormat) site.fail("not a mixq search-scores file");
  if (read_int_attribute(site, f.get(), "version") != kVersion) site.fail("unsupported search-scores version");
  search_scores_table t;
  t.method = read_string_attribute(site, f.get(), "/", "method");
  t.fingerprint = read_string_attribute(site, f.get(), "/", "fingerprint");
  t.budget_bits = read_double_attribute(site, f.get(), "budget_bits");
  t.effective_bits = read_double_attribute(site, f.get(), "effective_bits");
  t.format_bits = read_map<double>(site, f.get(), "format_bits");
  t.weights = read_map<int64_t>(site, f.get(), "weights");
  for (const auto& [format, bits] : t.format_bits)
    if (H5Lexists(f.get(), ("scores/" + format).c_str(), H5P_DEFAULT) > 0)
      t.scores[format] = read_map<double>(site, f.get(), "scores/" + format);
  std::vector<std::string> names;
  for (const auto& [format, bits] : t.format_bits) names.push_back(format);
  for (const auto& [group, index] : read_map<int64_t>(site, f.get(), "chosen")) {
    if (index < 0 || size_t(index) >= names.size())
      site.fail(fmt::format("/chosen: group {} has format index {} of {}", group, index, names.size()));
    t.chosen[group] = names[size_t(index)];
  }
  return t;
}

}  // namespace mixq
