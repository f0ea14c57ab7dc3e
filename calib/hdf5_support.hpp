// Building blocks for the run directory's HDF5 files (calibration statistics, search scores):
// identifiers that close themselves, errors that name the file and the object, string attributes,
// and maps stored as two 1-D datasets (names, values). Errors throw token_file_error.
#pragma once

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "calib/token_file.hpp"

namespace mixq::hdf5 {

// Errors reach the caller as exceptions, not as an error-stack dump on stderr.
class hdf5_quiet {
 public:
  hdf5_quiet() {
    H5Eget_auto2(H5E_DEFAULT, &func_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~hdf5_quiet() { H5Eset_auto2(H5E_DEFAULT, func_, data_); }
  hdf5_quiet(const hdf5_quiet&) = delete;
  hdf5_quiet& operator=(const hdf5_quiet&) = delete;

 private:
  H5E_auto2_t func_ = nullptr;
  void* data_ = nullptr;
};

// The innermost entry of HDF5's error stack ("truncated file: eof = ..."), which says more than the
// API call that failed.
inline std::string hdf5_reason() {
  std::string reason;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* err, void* out) -> herr_t {
        if (n == 0 && err->desc) *static_cast<std::string*>(out) = err->desc;
        return 0;
      },
      &reason);
  return reason.empty() ? "" : fmt::format(" (HDF5: {})", reason);
}

// An HDF5 identifier, closed with the function that matches its kind.
class h5_id {
 public:
  using closer = herr_t (*)(hid_t);
  h5_id(hid_t id, closer close_fn) : id_(id), close_(close_fn) {}
  ~h5_id() {
    if (id_ >= 0) close_(id_);
  }
  h5_id(h5_id&& other) noexcept : id_(std::exchange(other.id_, -1)), close_(other.close_) {}
  h5_id(const h5_id&) = delete;
  h5_id& operator=(const h5_id&) = delete;

  hid_t get() const { return id_; }
  // Closes now, for the file, whose close is where buffered writes can still fail.
  herr_t close() { return close_(std::exchange(id_, -1)); }

 private:
  hid_t id_;
  closer close_;
};

// The file that every message names.
struct h5_site {
  std::string file;

  [[noreturn]] void fail(std::string_view what) const { throw token_file_error(fmt::format("{}: {}", file, what)); }
  template <class T>
  T check(T result, std::string_view what) const {
    if (result < 0) throw token_file_error(fmt::format("{}: {}{}", file, what, hdf5_reason()));
    return result;
  }
};

// Per value type: its HDF5 type on disk, in memory, and the class a reader accepts.
template <class T>
struct h5_traits;
template <>
struct h5_traits<float> {
  static hid_t file_type() { return H5T_IEEE_F32LE; }
  static hid_t memory_type() { return H5T_NATIVE_FLOAT; }
  static constexpr H5T_class_t type_class = H5T_FLOAT;
};
template <>
struct h5_traits<double> {
  static hid_t file_type() { return H5T_IEEE_F64LE; }
  static hid_t memory_type() { return H5T_NATIVE_DOUBLE; }
  static constexpr H5T_class_t type_class = H5T_FLOAT;
};
template <>
struct h5_traits<int64_t> {
  static hid_t file_type() { return H5T_STD_I64LE; }
  static hid_t memory_type() { return H5T_NATIVE_INT64; }
  static constexpr H5T_class_t type_class = H5T_INTEGER;
};

// Fixed-length UTF-8 string type of `size` bytes (HDF5 allows no zero-sized string).
inline h5_id string_type(const h5_site& site, size_t size, std::string_view what) {
  h5_id type(site.check(H5Tcopy(H5T_C_S1), what), H5Tclose);
  site.check(H5Tset_size(type.get(), std::max<size_t>(size, 1)), what);
  site.check(H5Tset_strpad(type.get(), H5T_STR_NULLPAD), what);
  site.check(H5Tset_cset(type.get(), H5T_CSET_UTF8), what);
  return type;
}

// ---- writing ----------------------------------------------------------------------------------

inline void write_string_attribute(const h5_site& site, hid_t owner, std::string_view owner_path, const char* name,
                            std::string_view value) {
  const std::string what = fmt::format("cannot write attribute '{}' of {}", name, owner_path);
  h5_id type = string_type(site, value.size(), what);
  h5_id space(site.check(H5Screate(H5S_SCALAR), what), H5Sclose);
  h5_id attr(site.check(H5Acreate2(owner, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT), what),
             H5Aclose);
  std::string padded(value);
  padded.resize(std::max<size_t>(value.size(), 1), '\0');
  site.check(H5Awrite(attr.get(), type.get(), padded.data()), what);
}

inline void write_int_attribute(const h5_site& site, hid_t owner, const char* name, int64_t value) {
  const std::string what = fmt::format("cannot write attribute '{}' of /", name);
  h5_id space(site.check(H5Screate(H5S_SCALAR), what), H5Sclose);
  h5_id attr(site.check(H5Acreate2(owner, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT), what),
             H5Aclose);
  site.check(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value), what);
}

// A 1-D dataset of `n` elements; a zero-length one is valid HDF5 and nothing is written into it.
inline void write_dataset(const h5_site& site, hid_t group, const std::string& path, const char* name, hid_t file_type,
                   hid_t memory_type, size_t n, const void* data) {
  const std::string what = fmt::format("cannot write {}", path);
  const hsize_t dims[1] = {n};
  h5_id space(site.check(H5Screate_simple(1, dims, nullptr), what), H5Sclose);
  h5_id set(site.check(H5Dcreate2(group, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), what),
            H5Dclose);
  if (n > 0) site.check(H5Dwrite(set.get(), memory_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), what);
}

template <class T>
void write_map(const h5_site& site, hid_t file, const std::string& group_name, const std::map<std::string, T>& map) {
  const std::string path = "/" + group_name;
  h5_id group(site.check(H5Gcreate2(file, group_name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
                         fmt::format("cannot create group {}", path)),
              H5Gclose);
  size_t width = 0;
  for (const auto& entry : map) width = std::max(width, entry.first.size());
  width = std::max<size_t>(width, 1);
  std::string names(map.size() * width, '\0');  // null-padded, one fixed-width slot per name
  std::vector<T> values;
  values.reserve(map.size());
  size_t i = 0;
  for (const auto& [name, value] : map) {
    name.copy(names.data() + i++ * width, name.size());
    values.push_back(value);
  }
  h5_id names_type = string_type(site, width, fmt::format("cannot write {}/names", path));
  write_dataset(site, group.get(), path + "/names", "names", names_type.get(), names_type.get(), map.size(),
                names.data());
  write_dataset(site, group.get(), path + "/values", "values", h5_traits<T>::file_type(),
                h5_traits<T>::memory_type(), values.size(), values.data());
}

inline h5_id open_attribute(const h5_site& site, hid_t owner, std::string_view owner_path, const char* name) {
  const htri_t exists =
      site.check(H5Aexists(owner, name), fmt::format("cannot look for attribute '{}' of {}", name, owner_path));
  if (exists == 0) site.fail(fmt::format("missing attribute '{}' of {}", name, owner_path));
  return h5_id(site.check(H5Aopen(owner, name, H5P_DEFAULT),
                          fmt::format("cannot open attribute '{}' of {}", name, owner_path)),
               H5Aclose);
}

inline std::string read_string_attribute(const h5_site& site, hid_t owner, std::string_view owner_path, const char* name) {
  h5_id attr = open_attribute(site, owner, owner_path, name);
  const std::string what = fmt::format("cannot read attribute '{}' of {}", name, owner_path);
  h5_id type(site.check(H5Aget_type(attr.get()), what), H5Tclose);
  h5_id space(site.check(H5Aget_space(attr.get()), what), H5Sclose);
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) != 0 ||
      H5Sget_simple_extent_npoints(space.get()) != 1)
    site.fail(fmt::format("attribute '{}' of {} is not a single fixed-length string", name, owner_path));
  std::string value(H5Tget_size(type.get()), '\0');
  site.check(H5Aread(attr.get(), type.get(), value.data()), what);
  value.resize(std::min(value.size(), value.find('\0')));
  return value;
}

inline int64_t read_int_attribute(const h5_site& site, hid_t owner, const char* name) {
  h5_id attr = open_attribute(site, owner, "/", name);
  const std::string what = fmt::format("cannot read attribute '{}' of /", name);
  h5_id type(site.check(H5Aget_type(attr.get()), what), H5Tclose);
  h5_id space(site.check(H5Aget_space(attr.get()), what), H5Sclose);
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Sget_simple_extent_npoints(space.get()) != 1)
    site.fail(fmt::format("attribute '{}' of / is not a single integer", name));
  int64_t value = 0;
  site.check(H5Aread(attr.get(), H5T_NATIVE_INT64, &value), what);
  return value;
}

inline h5_id open_group(const h5_site& site, hid_t file, const std::string& path) {
  if (site.check(H5Lexists(file, path.c_str(), H5P_DEFAULT), fmt::format("cannot look for {}", path)) == 0)
    site.fail(fmt::format("missing group {}", path));
  return h5_id(site.check(H5Gopen2(file, path.c_str(), H5P_DEFAULT), fmt::format("cannot open group {}", path)),
               H5Gclose);
}

// An opened 1-D dataset, its file type and length; checked against the file's size so a damaged
// extent cannot ask for more memory than the file could ever hold.
struct dataset_1d {
  h5_id set, type;
  size_t length = 0;
};

inline dataset_1d open_dataset(const h5_site& site, hid_t file, hid_t group, const std::string& path, const char* name,
                        H5T_class_t type_class) {
  if (site.check(H5Lexists(group, name, H5P_DEFAULT), fmt::format("cannot look for {}", path)) == 0)
    site.fail(fmt::format("missing dataset {}", path));
  const std::string what = fmt::format("cannot read {}", path);
  h5_id set(site.check(H5Dopen2(group, name, H5P_DEFAULT), what), H5Dclose);
  h5_id type(site.check(H5Dget_type(set.get()), what), H5Tclose);
  if (H5Tget_class(type.get()) != type_class || H5Tis_variable_str(type.get()) > 0)
    site.fail(fmt::format("{} has the wrong element type", path));
  h5_id space(site.check(H5Dget_space(set.get()), what), H5Sclose);
  hsize_t dims[1] = {0};
  if (H5Sget_simple_extent_ndims(space.get()) != 1 || H5Sget_simple_extent_dims(space.get(), dims, nullptr) != 1)
    site.fail(fmt::format("{} is not one-dimensional", path));
  hsize_t file_size = 0;
  site.check(H5Fget_filesize(file, &file_size), what);
  const size_t element = H5Tget_size(type.get());
  if (element == 0 || dims[0] > file_size / element)
    site.fail(fmt::format("{} declares {} entries of {} bytes, more than the {}-byte file holds", path, dims[0],
                          element, file_size));
  return dataset_1d{std::move(set), std::move(type), static_cast<size_t>(dims[0])};
}

template <class T>
std::map<std::string, T> read_map(const h5_site& site, hid_t file, const std::string& group_name) {
  const std::string path = "/" + group_name;
  h5_id group = open_group(site, file, path);
  dataset_1d names = open_dataset(site, file, group.get(), path + "/names", "names", H5T_STRING);
  dataset_1d values = open_dataset(site, file, group.get(), path + "/values", "values", h5_traits<T>::type_class);
  if (values.length != names.length)
    site.fail(fmt::format("{}/values has {} entries but names has {}", path, values.length, names.length));

  const size_t width = H5Tget_size(names.type.get());
  std::string name_bytes(names.length * width, '\0');
  std::vector<T> value_list(values.length);
  if (names.length > 0) {
    site.check(H5Dread(names.set.get(), names.type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, name_bytes.data()),
               fmt::format("cannot read {}/names", path));
    site.check(H5Dread(values.set.get(), h5_traits<T>::memory_type(), H5S_ALL, H5S_ALL, H5P_DEFAULT,
                       value_list.data()),
               fmt::format("cannot read {}/values", path));
  }
  std::map<std::string, T> map;
  for (size_t i = 0; i < names.length; ++i) {
    std::string_view slot(name_bytes.data() + i * width, width);
    map.emplace(slot.substr(0, std::min(slot.size(), slot.find('\0'))), value_list[i]);
  }
  if (map.size() != names.length) site.fail(fmt::format("{}/names repeats a name", path));
  return map;
}


// Creates `file` through a temporary sibling renamed into place; `fill` writes the contents.
template <class Fill>
void write_atomically(const std::string& file, Fill&& fill) {
  const h5_site site{file};
  const std::string tmp = file + ".tmp";
  try {
    {
      h5_id f(site.check(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), fmt::format("cannot create {}", tmp)),
              H5Fclose);
      fill(site, f.get());
      site.check(f.close(), fmt::format("cannot finish {}", tmp));
    }
    if (std::rename(tmp.c_str(), file.c_str()) != 0) site.fail(fmt::format("cannot rename {} into place", tmp));
  } catch (...) {
    std::remove(tmp.c_str());  // the original error is the one to report
    throw;
  }
}

}  // namespace mixq::hdf5
