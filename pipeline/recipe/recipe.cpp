// Recipe YAML -> mixq::recipe. The schema (recipes/README.md has the long form):
//
//   name: mamba_moe_fp8_aggressive     # optional: the file stem
//   description: ...                   # optional
//   calibration:                       # optional; every key optional
//     data: path/to/file               # .txt / .jsonl / .bin; omitted: the built-in text
//     samples: 64                      # positive integers
//     seq_len: 256
//     batch: 1
//   quantize:
//     default: bf16                    # optional (bf16); a format, or {format:, weights:}
//     rules:                           # optional; the first match wins
//       - match: "*mixer.experts.*"    # a glob or a list of globs (one rule per glob, same line)
//         format: nvfp4                # bf16 | fp8 | nvfp4 | nvfp4_w4a16 (the exportable formats)
//         weights: mse                 # optional (max): the weight scale selector
//   kv_cache: fp8                      # none | fp8 (default none)
//   export:                            # optional
//     layout: modelopt                 # modelopt | compressed-tensors
//     max_shard_size: 5GB              # bytes, or KB/MB/GB/TB (powers of 1000), KiB/MiB/GiB/TiB
//
// Selectors: NVFP4 formats max, mse (the FP8 scale sweep), mse_multiplier, four_over_six,
// mse+four_over_six; FP8 max, mse. Every error names the origin and the 1-based line.
#include "pipeline/recipe/recipe.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include "pipeline/io/safetensors_file.hpp"

namespace mixq {
namespace {

// What the exporter can write (hf-export-format §2.4); other formats exist for error studies only.
constexpr std::array kExportable = {format_id::bf16, format_id::fp8_per_tensor, format_id::nvfp4,
                                    format_id::nvfp4_w4a16};

constexpr std::array kNvfp4Selectors = {nvfp4_selector::max, nvfp4_selector::mse_fp8_sweep,
                                        nvfp4_selector::mse_multiplier, nvfp4_selector::four_over_six,
                                        nvfp4_selector::mse_four_over_six};
constexpr std::array<std::pair<fp8_selector, std::string_view>, 2> kFp8Selectors = {
    {{fp8_selector::max, "max"}, {fp8_selector::mse, "mse"}}};

bool is_exportable(format_id id) { return std::find(kExportable.begin(), kExportable.end(), id) != kExportable.end(); }

std::string exportable_names() {
  std::vector<std::string_view> names;
  for (format_id id : kExportable) names.push_back(traits_of(id).name);
  return fmt::format("{}", fmt::join(names, ", "));
}

// The exportable format closest to one that is not: same element width and activation handling.
std::string_view exportable_substitute(format_id id) {
  const format_traits& t = traits_of(id);
  if (t.element_bits == 4) return t.quantizes_activations ? "nvfp4" : "nvfp4_w4a16";
  return "fp8";
}

bool is_nvfp4(format_id id) { return traits_of(id).element == element_kind::e2m1 && traits_of(id).block_size == 16; }
bool is_fp8(format_id id) { return traits_of(id).element == element_kind::e4m3 && traits_of(id).block_size == 0; }

std::string_view kind_of(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "empty";
    case YAML::NodeType::Scalar: return "a scalar";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Undefined: break;
  }
  return "undefined";
}

// 1-based; an empty document has no mark and reports line 1.
int line_of(const YAML::Mark& m) { return m.line < 0 ? 1 : m.line + 1; }

// A recipe name from its origin when the YAML has none: "recipes/x.yaml" -> "x".
std::string stem_of(std::string_view origin) {
  constexpr std::string_view builtin = "built-in:";
  if (origin.substr(0, builtin.size()) == builtin) return std::string(origin.substr(builtin.size()));
  return std::filesystem::path(std::string(origin)).stem().string();
}

class recipe_parser {
 public:
  explicit recipe_parser(std::string_view origin) : origin_(origin) {}

  recipe parse(const YAML::Node& root) const {
    expect_map(root, "the recipe");
    check_keys(root, "the recipe", {"name", "description", "calibration", "quantize", "search", "kv_cache", "export"});
    recipe r;
    r.origin = origin_;
    r.name = root["name"] ? scalar(root["name"], "name") : stem_of(origin_);
    if (r.name.empty()) fail(root["name"], "name must not be empty");
    if (root["description"]) r.description = scalar(root["description"], "description");
    if (root["calibration"]) r.calibration = calibration(root["calibration"]);
    if (root["search"]) {
      r.search = search(root["search"]);
      if (root["quantize"])
        fail(root["quantize"], "a recipe with 'search' chooses the formats itself; keep modules BF16 with "
                               "search.disable instead of quantize rules");
    } else {
      if (!root["quantize"]) fail(root, "missing key 'quantize' (the format rules) or 'search'");
      quantize(root["quantize"], r);
    }
    if (root["kv_cache"]) r.kv_cache = kv_cache(root["kv_cache"]);
    if (root["export"]) r.output = output(root["export"]);
    return r;
  }

 private:
  std::string origin_;

  [[noreturn]] void fail(const YAML::Node& at, std::string_view msg) const {
    throw io_error(fmt::format("{}:{}: {}", origin_, line_of(at.Mark()), msg));
  }

  void expect_map(const YAML::Node& n, std::string_view where) const {
    if (!n.IsMap()) fail(n, fmt::format("{} must be a mapping, not {}", where, kind_of(n)));
  }

  // Every key a plain name from `allowed`, none twice.
  void check_keys(const YAML::Node& map, std::string_view where, std::initializer_list<std::string_view> allowed) const {
    std::set<std::string> seen;
    for (const auto& kv : map) {
      const YAML::Node& key = kv.first;
      if (!key.IsScalar()) fail(key, fmt::format("keys in {} must be names, not {}", where, kind_of(key)));
      const std::string& k = key.Scalar();
      if (std::find(allowed.begin(), allowed.end(), k) == allowed.end())
        fail(key, fmt::format("unknown key '{}' in {} (expected one of: {})", k, where, fmt::join(allowed, ", ")));
      if (!seen.insert(k).second) fail(key, fmt::format("duplicate key '{}' in {}", k, where));
    }
  }

  std::string scalar(const YAML::Node& n, std::string_view where) const {
    if (!n.IsScalar()) fail(n, fmt::format("{} must be a string, not {}", where, kind_of(n)));
    return n.Scalar();
  }

  int64_t positive_int(const YAML::Node& n, std::string_view where) const {
    if (!n.IsScalar()) fail(n, fmt::format("{} must be a positive integer, not {}", where, kind_of(n)));
    const std::string& s = n.Scalar();
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || v <= 0)
      fail(n, fmt::format("{} must be a positive integer, not '{}'", where, s));
    return v;
  }

  // "5GB", "500 MiB", "1000000": decimal (KB..TB) or binary (KiB..TiB) units.
  uint64_t byte_size(const YAML::Node& n, std::string_view where) const {
    const std::string s = scalar(n, where);
    const auto bad = [&] {
      fail(n, fmt::format("{} must be a byte count or a size like 5GB or 500MiB, not '{}'", where, s));
    };
    uint64_t v = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || v == 0) bad();
    std::string_view unit(end, size_t(s.data() + s.size() - end));
    if (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
    static constexpr std::array<std::pair<std::string_view, uint64_t>, 10> kUnits = {{{"", 1},
                                                                                       {"B", 1},
                                                                                       {"KB", 1'000},
                                                                                       {"MB", 1'000'000},
                                                                                       {"GB", 1'000'000'000},
                                                                                       {"TB", 1'000'000'000'000},
                                                                                       {"KiB", uint64_t(1) << 10},
                                                                                       {"MiB", uint64_t(1) << 20},
                                                                                       {"GiB", uint64_t(1) << 30},
                                                                                       {"TiB", uint64_t(1) << 40}}};
    const auto u = std::find_if(kUnits.begin(), kUnits.end(), [&](const auto& p) { return p.first == unit; });
    if (u == kUnits.end()) bad();
    if (v > std::numeric_limits<uint64_t>::max() / u->second) fail(n, fmt::format("{} '{}' is too large", where, s));
    return v * u->second;
  }

  calibration_settings calibration(const YAML::Node& n) const {
    expect_map(n, "calibration");
    check_keys(n, "calibration", {"data", "samples", "seq_len", "batch"});
    calibration_settings c;
    if (n["data"]) c.data = scalar(n["data"], "calibration.data");
    if (n["samples"]) c.samples = positive_int(n["samples"], "calibration.samples");
    if (n["seq_len"]) c.seq_len = positive_int(n["seq_len"], "calibration.seq_len");
    if (n["batch"]) c.batch = positive_int(n["batch"], "calibration.batch");
    return c;
  }

  // A format name the exporter can write; its selectors stay at max.
  weight_quant_spec format_spec(const YAML::Node& format, std::string_view where) const {
    const std::string name = scalar(format, fmt::format("{}.format", where));
    const std::optional<format_id> id = parse_format(name);
    if (!id) fail(format, fmt::format("unknown format '{}' in {} (expected one of: {})", name, where, exportable_names()));
    if (!is_exportable(*id))
      fail(format, fmt::format("format '{}' can be fake-quantized but not exported; use {} (exportable: {})", name,
                               exportable_substitute(*id), exportable_names()));
    weight_quant_spec spec;
    spec.format = *id;
    return spec;
  }

  // `format` (required) and `weights` (optional) of a rule or of the default.
  weight_quant_spec weight_spec(const YAML::Node& map, std::string_view where) const {
    if (!map["format"]) fail(map, fmt::format("missing key 'format' in {}", where));
    weight_quant_spec spec = format_spec(map["format"], where);
    const YAML::Node weights = map["weights"];
    if (!weights) return spec;
    const std::string_view name = traits_of(spec.format).name;
    const std::string sel = scalar(weights, fmt::format("{}.weights", where));
    std::vector<std::string_view> valid;
    if (is_nvfp4(spec.format)) {
      for (nvfp4_selector s : kNvfp4Selectors) {
        if (selector_name(s) == sel) {
          spec.nvfp4 = s;
          return spec;
        }
        valid.push_back(selector_name(s));
      }
    } else if (is_fp8(spec.format)) {
      for (const auto& [s, s_name] : kFp8Selectors) {
        if (s_name == sel) {
          spec.fp8 = s;
          return spec;
        }
        valid.push_back(s_name);
      }
    } else {
      fail(weights, fmt::format("{}.weights: format '{}' has no weight scales to select", where, name));
    }
    fail(weights, fmt::format("weight selector '{}' does not apply to {} in {} (expected one of: {})", sel, name, where,
                              fmt::join(valid, ", ")));
  }

  weight_quant_spec default_spec(const YAML::Node& n) const {
    constexpr std::string_view where = "quantize.default";
    if (n.IsScalar()) return format_spec(n, where);
    if (!n.IsMap()) fail(n, fmt::format("{} must be a format or a mapping with 'format', not {}", where, kind_of(n)));
    check_keys(n, where, {"format", "weights"});
    return weight_spec(n, where);
  }

  void rule(const YAML::Node& n, size_t index, recipe& r) const {
    const std::string where = fmt::format("quantize.rules[{}]", index);
    expect_map(n, where);
    check_keys(n, where, {"match", "format", "weights"});
    if (!n["match"]) fail(n, fmt::format("missing key 'match' in {}", where));
    const weight_quant_spec spec = weight_spec(n, where);
    const int line = line_of(n.Mark());
    const YAML::Node match = n["match"];
    std::vector<YAML::Node> globs;
    if (match.IsScalar()) {
      globs.push_back(match);
    } else if (match.IsSequence() && match.size() > 0) {
      for (const auto& g : match) globs.push_back(g);
    } else {
      fail(match, fmt::format("{}.match must be a glob or a non-empty list of globs, not {}", where, kind_of(match)));
    }
    for (const YAML::Node& g : globs) {
      const std::string pattern = scalar(g, fmt::format("{}.match", where));
      if (pattern.empty()) fail(g, fmt::format("empty glob in {}.match", where));
      r.rules.push_back({pattern, spec, line});
    }
  }

  void quantize(const YAML::Node& n, recipe& r) const {
    expect_map(n, "quantize");
    check_keys(n, "quantize", {"default", "rules"});
    if (n["default"]) r.default_weight = default_spec(n["default"]);
    const YAML::Node rules = n["rules"];
    if (!rules) return;
    if (!rules.IsSequence()) fail(rules, fmt::format("quantize.rules must be a list, not {}", kind_of(rules)));
    size_t index = 0;
    for (const YAML::Node& item : rules) rule(item, index++, r);
  }

  double positive_number(const YAML::Node& n, std::string_view where) const {
    const std::string s = scalar(n, where);
    double v = 0.0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || !(v > 0.0) || !std::isfinite(v))
      fail(n, fmt::format("{} must be a positive number, not '{}'", where, s));
    return v;
  }

  search_settings search(const YAML::Node& n) const {
    expect_map(n, "search");
    check_keys(n, "search", {"effective_bits", "candidates", "method", "score_samples", "disable", "cost"});
    search_settings st;
    st.enabled = true;
    if (!n["effective_bits"]) fail(n, "missing key 'effective_bits' in search (the budget, e.g. 5.0)");
    st.effective_bits = positive_number(n["effective_bits"], "search.effective_bits");
    if (st.effective_bits > 16.0) fail(n["effective_bits"], "search.effective_bits cannot exceed 16 (all BF16)");
    const YAML::Node cands = n["candidates"];
    if (!cands) fail(n, "missing key 'candidates' in search (e.g. [nvfp4, fp8])");
    if (!cands.IsSequence() || cands.size() == 0)
      fail(cands, fmt::format("search.candidates must be a non-empty list of formats, not {}", kind_of(cands)));
    size_t i = 0;
    for (const YAML::Node& c : cands) {
      const std::string where = fmt::format("search.candidates[{}]", i++);
      weight_quant_spec spec;
      if (c.IsScalar()) {
        spec = format_spec(c, where);
      } else {
        expect_map(c, where);
        check_keys(c, where, {"format", "weights"});
        spec = weight_spec(c, where);
      }
      if (spec.format == format_id::bf16) continue;  // always a candidate
      for (const weight_quant_spec& other : st.candidates)
        if (other.format == spec.format) fail(c, fmt::format("{}: format '{}' is listed twice", where, traits_of(spec.format).name));
      st.candidates.push_back(spec);
    }
    if (st.candidates.empty()) fail(cands, "search.candidates needs at least one format besides bf16");
    if (const YAML::Node m = n["method"]) {
      const std::string s = scalar(m, "search.method");
      const auto methods = {score_method::fisher, score_method::kl, score_method::hessian};
      const auto it = std::find_if(methods.begin(), methods.end(), [&](score_method x) { return to_string(x) == s; });
      if (it == methods.end()) fail(m, fmt::format("unknown search.method '{}' (expected one of: fisher, kl, hessian)", s));
      st.method = *it;
    }
    if (n["score_samples"]) st.score_samples = positive_int(n["score_samples"], "search.score_samples");
    if (const YAML::Node d = n["disable"]) {
      std::vector<YAML::Node> globs;
      if (d.IsScalar()) globs.push_back(d);
      else if (d.IsSequence()) for (const auto& g : d) globs.push_back(g);
      else fail(d, fmt::format("search.disable must be a glob or a list of globs, not {}", kind_of(d)));
      for (const YAML::Node& g : globs) {
        const std::string pattern = scalar(g, "search.disable");
        if (pattern.empty()) fail(g, "empty glob in search.disable");
        st.disable.emplace_back(pattern, line_of(g.Mark()));
      }
    }
    if (const YAML::Node c = n["cost"]) {
      const std::string s = scalar(c, "search.cost");
      if (s == "weight") st.cost = cost_model::weight;
      else if (s == "active_moe") st.cost = cost_model::active_moe;
      else fail(c, fmt::format("unknown search.cost '{}' (expected one of: weight, active_moe)", s));
    }
    return st;
  }

  kv_cache_format kv_cache(const YAML::Node& n) const {
    const std::string s = scalar(n, "kv_cache");
    for (kv_cache_format f : {kv_cache_format::none, kv_cache_format::fp8})
      if (to_string(f) == s) return f;
    fail(n, fmt::format("unknown kv_cache '{}' (expected one of: none, fp8)", s));
  }

  export_settings output(const YAML::Node& n) const {
    expect_map(n, "export");
    check_keys(n, "export", {"layout", "max_shard_size"});
    export_settings e;
    if (const YAML::Node layout = n["layout"]) {
      const std::string s = scalar(layout, "export.layout");
      const auto layouts = {export_layout::modelopt, export_layout::compressed_tensors};
      const auto it = std::find_if(layouts.begin(), layouts.end(), [&](export_layout l) { return to_string(l) == s; });
      if (it == layouts.end())
        fail(layout, fmt::format("unknown export.layout '{}' (expected one of: modelopt, compressed-tensors)", s));
      e.layout = *it;
    }
    if (n["max_shard_size"]) e.max_shard_bytes = byte_size(n["max_shard_size"], "export.max_shard_size");
    return e;
  }
};

}  // namespace

std::string_view to_string(score_method m) {
  return m == score_method::fisher ? "fisher" : m == score_method::kl ? "kl" : "hessian";
}
std::string_view to_string(cost_model c) { return c == cost_model::weight ? "weight" : "active_moe"; }

std::string_view to_string(kv_cache_format f) { return f == kv_cache_format::fp8 ? "fp8" : "none"; }
std::string_view to_string(export_layout l) {
  return l == export_layout::compressed_tensors ? "compressed-tensors" : "modelopt";
}

recipe parse_recipe(std::string_view yaml_text, std::string_view origin) {
  // yaml-cpp reports bad YAML (and any later misuse) as YAML::Exception with a mark: one io_error.
  try {
    return recipe_parser(origin).parse(YAML::Load(std::string(yaml_text)));
  } catch (const YAML::Exception& e) {
    // An unquoted glob that starts with '*' reads as a YAML alias.
    const bool alias = e.msg.find("anchor") != std::string::npos || e.msg.find("alias") != std::string::npos;
    throw io_error(fmt::format("{}:{}: malformed YAML: {}{}", origin, line_of(e.mark), e.msg,
                               alias ? " (quote globs that start with '*', e.g. match: \"*mixer.experts.*\")" : ""));
  }
}

}  // namespace mixq
