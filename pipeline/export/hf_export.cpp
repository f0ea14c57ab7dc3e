#include "pipeline/export/hf_export.hpp"

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <random>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>

#include "pipeline/io/run_paths.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error
#include "pipeline/io/safetensors_writer.hpp"
#include "pipeline/model/hf_config.hpp"

namespace mixq {
namespace fs = std::filesystem;

namespace {

// Module -> format of every linear of spec, bf16 where `quantized` has none.
layer_formats formats_from(const model_spec& spec, const std::unordered_map<std::string, format_id>& quantized) {
  layer_formats out;
  for (const linear_spec& l : spec.linears) {
    const auto it = quantized.find(l.module);
    out.emplace_back(l.module, it == quantized.end() ? format_id::bf16 : it->second);
  }
  return out;
}

}  // namespace

layer_formats formats_of(const model_spec& spec, const quantized_weights& q) {
  std::unordered_map<std::string, format_id> quantized;
  for (const quantized_linear& l : q.linears) quantized.emplace(l.module, l.format);
  return formats_from(spec, quantized);
}

layer_formats formats_of(const model_spec& spec, const weight_quantizer& quantizer) {
  std::unordered_map<std::string, format_id> quantized;
  for (size_t k = 0; k < quantizer.size(); ++k) quantized.emplace(quantizer.linear(k).module, quantizer.format(k));
  return formats_from(spec, quantized);
}

namespace {

// Files of a HF model directory besides weights and config that loaders read: tokenizer, chat
// template, generation settings, remote code.
bool is_companion_file(const fs::path& p) {
  static const std::set<std::string> kNames{"tokenizer.json",        "tokenizer_config.json", "tokenizer.model",
                                            "special_tokens_map.json", "added_tokens.json",   "vocab.json",
                                            "merges.txt",            "generation_config.json", "chat_template.jinja",
                                            "chat_template.json",    "preprocessor_config.json"};
  const std::string name = p.filename().string(), ext = p.extension().string();
  return kNames.count(name) != 0 || ext == ".py" || ext == ".tiktoken";
}

void write_json(const fs::path& path, const nlohmann::ordered_json& j) {
  std::ofstream f(path, std::ios::binary);
  f << j.dump(2) << "\n";
  f.flush();
  if (!f) throw io_error(fmt::format("{}: cannot write", path.string()));
}

// One F32 value: 0-d for ModelOpt, [1] for compressed-tensors (its loader's per-tensor shape).
encoded_tensor f32_scalar(std::string name, float v, export_layout layout) {
  std::vector<int64_t> shape;
  if (layout == export_layout::compressed_tensors) shape = {1};
  encoded_tensor t{std::move(name), dtype::f32, std::move(shape), std::vector<std::byte>(4)};
  std::memcpy(t.bytes.data(), &v, 4);
  return t;
}

}  // namespace

namespace {

// The start of a staging directory's name beside final_dir: ".NAME.KIND-HOST-" (KIND partial: the
// export being written; old: the export it replaces, until removed), then the process id.
std::string staging_prefix(const fs::path& final_dir, const char* kind) {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  return fmt::format(".{}.{}-{}-", final_dir.filename().string(), kind, host);
}

// Staging directories that a run on this host left when it was killed (SIGINT, SIGKILL, a node's
// time limit) are removed once their process is gone; another host's, or a running process's,
// are left alone. Returns how many were removed.
int64_t remove_abandoned_staging(const fs::path& final_dir) {
  int64_t removed = 0;
  std::error_code ec;
  for (const char* kind : {"partial", "old"}) {
    const std::string prefix = staging_prefix(final_dir, kind);
    for (fs::directory_iterator it(final_dir.parent_path(), ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      if (!name.starts_with(prefix)) continue;
      char* rest = nullptr;
      const long pid = std::strtol(name.c_str() + prefix.size(), &rest, 10);
      if (pid <= 0 || *rest != '-' || !(::kill(pid_t(pid), 0) != 0 && errno == ESRCH)) continue;
      std::error_code gone;
      if (fs::remove_all(it->path(), gone) > 0 && !gone) ++removed;
    }
  }
  return removed;
}

// The export, given the tensors that replace each quantized linear's weight (`replaced`: the
// weights they replace) and every linear's format.
export_summary write_export(const checkpoint& source, const layer_formats& formats,
                            bool quantized, const std::map<std::string, kv_cache_scales>& kv,
                            std::vector<tensor_to_write> stored, const std::unordered_set<std::string>& replaced,
                            const fs::path& out, const export_options& options) {
  const fs::path final_dir = fs::absolute(out).lexically_normal();
  if (path_within(source.dir(), final_dir))
    throw io_error(fmt::format("{}: the output must not be or hold the source checkpoint {}", final_dir.string(),
                               source.dir().string()));
  if (fs::exists(final_dir) && !options.overwrite)
    throw io_error(fmt::format("{}: already exists (pass --force to replace it once the new export is complete)",
                               final_dir.string()));

  // 1. the tensors: quantized linears replace their weight; everything else is copied
  std::vector<encoded_tensor> encoded;  // the KV-cache scales
  for (const auto& [attention, s] : kv) {  // names per layout: kv_scale_names
    const auto [k_name, v_name] = kv_scale_names(attention, options.layout);
    encoded.push_back(f32_scalar(k_name, s.k, options.layout));
    encoded.push_back(f32_scalar(v_name, s.v, options.layout));
  }
  std::vector<tensor_to_write> tensors;
  export_summary summary;
  for (const checkpoint::entry& e : source.tensors()) {
    if (replaced.count(e.tensor->name)) continue;
    tensors.push_back({e.tensor->name, e.tensor->type, e.tensor->shape, e.shard->bytes(*e.tensor)});
    ++summary.copied;
  }
  for (tensor_to_write& t : stored) tensors.push_back(std::move(t));
  for (const encoded_tensor& t : encoded) tensors.push_back({t.name, t.type, t.shape, t.bytes});
  sort_for_alignment(tensors);
  summary.tensors = int64_t(tensors.size());
  for (const tensor_to_write& t : tensors) summary.tensor_bytes += expected_bytes(t);

  // 2. into a temporary sibling directory, named for this host and process (staging_prefix)
  fs::create_directories(final_dir.parent_path());
  summary.abandoned_removed = remove_abandoned_staging(final_dir);
  std::random_device rd;
  const auto staging = [&](const char* kind) {
    return final_dir.parent_path() / fmt::format("{}{}-{:08x}", staging_prefix(final_dir, kind), ::getpid(), rd());
  };
  const fs::path tmp = staging("partial");
  try {
    fs::create_directory(tmp);
    write_checkpoint_tensors(tmp, tensors, options.max_shard_bytes);
    read_hf_config(source.dir());  // validates; the copy below keeps the source's key order
    std::ifstream config_file(source.dir() / "config.json", std::ios::binary);
    nlohmann::ordered_json config = nlohmann::ordered_json::parse(config_file);
    if (quantized) {
      const quant_configs c = make_quant_configs(formats, options.kv, options.layout, options.producer_version);
      config["quantization_config"] = c.quantization_config;
      if (!c.hf_quant_config.is_null()) write_json(tmp / "hf_quant_config.json", c.hf_quant_config);
    }
    write_json(tmp / "config.json", config);
    for (const fs::directory_entry& f : fs::directory_iterator(source.dir()))
      if (f.is_regular_file() && is_companion_file(f.path())) fs::copy_file(f.path(), tmp / f.path().filename());
    if (options.verify) options.verify(tmp);
    // 3. into place
    if (fs::exists(final_dir)) {
      const fs::path old = staging("old");
      fs::rename(final_dir, old);
      fs::rename(tmp, final_dir);
      fs::remove_all(old);
    } else {
      fs::rename(tmp, final_dir);
    }
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  for (const fs::directory_entry& f : fs::directory_iterator(final_dir)) summary.files.push_back(f.path());
  std::sort(summary.files.begin(), summary.files.end());
  return summary;
}

// One quantized linear at a time, as the export writes its tensors: quantized again when a tensor
// of another linear is asked for (the writer asks for a linear's scalars together, then, later,
// for its codes and block scales together: two quantizations each, one linear held).
class linear_on_demand {
 public:
  linear_on_demand(const weight_quantizer& quantizer, export_layout layout) : quantizer_(quantizer), layout_(layout) {}
  std::span<const std::byte> tensor(size_t k, size_t j) {
    if (k != k_) {
      tensors_.clear();
      scalars_.clear();
      q_ = quantizer_.quantize(k);
      tensors_ = stored_tensors(q_, layout_, scalars_);
      k_ = k;
    }
    return tensors_.at(j).bytes;
  }

 private:
  const weight_quantizer& quantizer_;
  export_layout layout_;
  size_t k_ = SIZE_MAX;
  quantized_linear q_;
  std::deque<float> scalars_;
  std::vector<tensor_to_write> tensors_;
};

}  // namespace

export_summary export_checkpoint(const checkpoint& source, const model_spec& spec, const quantized_weights& q,
                                 const fs::path& out, const export_options& options) {
  std::vector<tensor_to_write> stored;  // views of q (the quantized weights are not copied) and of
  std::deque<float> scalars;            // the F32 scalars
  std::unordered_set<std::string> replaced;
  for (const quantized_linear& l : q.linears) {
    replaced.insert(l.module + ".weight");
    for (tensor_to_write& t : stored_tensors(l, options.layout, scalars)) stored.push_back(std::move(t));
  }
  return write_export(source, formats_of(spec, q), !q.linears.empty(), q.kv, std::move(stored), replaced, out,
                      options);
}

export_summary export_checkpoint(const checkpoint& source, const model_spec& spec, const weight_quantizer& quantizer,
                                 const fs::path& out, const export_options& options) {
  // each linear's tensors named and shaped from an empty one of its format and shape, their bytes
  // made as they are written
  auto made = std::make_shared<linear_on_demand>(quantizer, options.layout);
  std::vector<tensor_to_write> stored;
  std::unordered_set<std::string> replaced;
  std::deque<float> unused;
  for (size_t k = 0; k < quantizer.size(); ++k) {
    const linear_spec& l = quantizer.linear(k);
    quantized_linear shape;
    shape.module = l.module;
    shape.format = quantizer.format(k);
    shape.nvfp4.rows = shape.fp8.rows = l.out_features;
    shape.nvfp4.cols = shape.fp8.cols = l.in_features;
    shape.fp8.scales = {0.0f};
    std::vector<tensor_to_write> parts = stored_tensors(shape, options.layout, unused);
    for (size_t j = 0; j < parts.size(); ++j) {
      parts[j].bytes = {};
      parts[j].produce = [made, k, j] { return made->tensor(k, j); };
      stored.push_back(std::move(parts[j]));
    }
    replaced.insert(l.module + ".weight");
  }
  return write_export(source, formats_of(spec, quantizer), quantizer.size() > 0, quantizer.scales().kv, std::move(stored), replaced,
                      out, options);
}

}  // namespace mixq
