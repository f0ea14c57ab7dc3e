// The JSON that tells the runtimes how an export is quantized, against its tensors: ModelOpt's
// hf_quant_config.json and config.json quantization_config (hf-export-format.md §3.1), or the
// compressed-tensors quantization_config (§4).
#include <regex>
#include <set>

#include <fmt/format.h>

#include "pipeline/inspect/inspection_checks.hpp"

namespace mixq::inspection {
namespace {

using json = nlohmann::json;

// What a config says one linear is.
struct declared_format {
  std::string algo;                // ModelOpt's name: "NVFP4", "W4A16_NVFP4", "FP8", ...
  bool needs_input_scale = false;  // static activation quantization (W4A4 NVFP4, W8A8 FP8)
};

declared_format modelopt_declared(const std::string& algo) {
  return {algo, algo == "NVFP4" || algo == "FP8"};
}

std::string stored_name(const linear_layer& l) {
  const std::string algo = modelopt_algo(l.format);
  return algo.empty() ? std::string(stored_format_name(l.format)) : algo;
}

// Formats are told apart by their activation scale, so a W4A4 / W8A8 linear missing it reads as
// weight-only: name the missing tensor rather than the format it then looks like.
void compare_declared(const linear_layer& l, const declared_format& d, const std::string& source,
                      checkpoint_inspection& r) {
  const std::string stored = modelopt_algo(l.format);
  const bool lost_input = d.algo == "NVFP4" && l.format == stored_format::nvfp4_w4a16;
  if (d.needs_input_scale && !l.input_scale && (stored == d.algo || lost_input)) {
    const bool ct_nvfp4 = r.layout == "compressed-tensors" && lost_input;
    r.problems.push_back(fmt::format("{}{} is missing: {} declares {}, which quantizes activations with it (vLLM "
                                     "initialises a missing one to float32 min and breaks the layer)",
                                     l.module, ct_nvfp4 ? ".input_global_scale" : ".input_scale", source, d.algo));
  } else if (stored != d.algo) {
    r.problems.push_back(fmt::format("{}: {} says {} but the tensors are {}", l.module, source, d.algo, stored_name(l)));
  }
}

// fnmatch-style: '*' matches any run, everything else literally (as ModelOpt's exclude patterns).
bool glob_match(std::string_view pattern, std::string_view name) {
  size_t p = 0, n = 0, star = std::string_view::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && pattern[p] == '*') star = p++, mark = n;
    else if (p < pattern.size() && pattern[p] == name[n]) ++p, ++n;
    else if (star != std::string_view::npos) p = star + 1, n = ++mark;
    else return false;
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

std::vector<std::string> strings(const json& j, const char* key) {
  std::vector<std::string> out;
  if (j.contains(key) && j[key].is_array())
    for (const auto& e : j[key])
      if (e.is_string()) out.push_back(e.get<std::string>());
  return out;
}

bool is_fp8_kv_scheme(const json& s) {
  return s.is_object() && s.value("num_bits", 0) == 8 && s.value("type", "") == "float";
}

void check_group_size(const json& entry, const std::string& where, checkpoint_inspection& r) {
  if (entry.contains("group_size") && entry["group_size"] != 16)
    r.problems.push_back(fmt::format("{}: group_size is {}; NVFP4 scales blocks of 16", where, entry["group_size"].dump()));
}

// config.json's flat quantization_config is what vLLM reads when present: it must say what
// hf_quant_config.json says.
void check_modelopt_config_json(const json& q, const json& qc, checkpoint_inspection& r) {
  if (!qc.is_object()) return;
  const std::string where = "config.json quantization_config";
  if (!qc.value("quant_method", "").starts_with("modelopt"))
    r.problems.push_back(fmt::format("{}: quant_method is {}; the runtimes route ModelOpt exports by \"modelopt\"", where,
                                     qc.contains("quant_method") ? qc["quant_method"].dump() : "absent"));
  if (qc.value("quant_algo", "") != r.quant_algo)
    r.problems.push_back(fmt::format("{}: quant_algo is {} but hf_quant_config.json says {}", where,
                                     qc.value("quant_algo", ""), r.quant_algo));
  if (r.quant_algo == "NVFP4" || r.quant_algo == "W4A16_NVFP4") check_group_size(qc, where, r);
  const json layers = q.value("quantized_layers", json::object());
  if (r.quant_algo == "MIXED_PRECISION" && !qc.contains("quantized_layers"))
    r.problems.push_back(fmt::format("{} has no quantized_layers: vLLM reads the MIXED_PRECISION map from it", where));
  else if (qc.contains("quantized_layers") && qc["quantized_layers"] != layers)
    r.problems.push_back(fmt::format("{}: quantized_layers differs from hf_quant_config.json's", where));
  const auto ignore = strings(qc, "ignore"), exclude = strings(q, "exclude_modules");
  if (std::set(ignore.begin(), ignore.end()) != std::set(exclude.begin(), exclude.end()))
    r.problems.push_back(fmt::format("{}: ignore differs from hf_quant_config.json's exclude_modules", where));
  if (is_fp8_kv_scheme(qc.value("kv_cache_scheme", json())) != (r.kv_cache_quant_algo == "FP8"))
    r.problems.push_back(fmt::format("{}: kv_cache_scheme disagrees with hf_quant_config.json's kv_cache_quant_algo ({})",
                                     where, r.kv_cache_quant_algo.empty() ? "null" : r.kv_cache_quant_algo));
}

// A compressed-tensors target or ignore entry: an exact module name, the class "Linear", or "re:"
// and a regex that must match from the start of the name (Python's re.match, as vLLM and
// compressed-tensors apply it).
struct ct_target {
  std::string text;
  std::optional<std::regex> re;
  bool matches(const std::string& module) const {
    if (re) return std::regex_search(module, *re, std::regex_constants::match_continuous);
    return text == module || text == "Linear";
  }
};

std::vector<ct_target> compile_targets(const std::vector<std::string>& texts, const std::string& where,
                                       checkpoint_inspection& r) {
  std::vector<ct_target> out;
  for (const auto& t : texts) {
    if (!t.starts_with("re:")) {
      out.push_back({t, std::nullopt});
      continue;
    }
    try {
      out.push_back({t, std::regex(t.substr(3), std::regex::ECMAScript)});
    } catch (const std::regex_error& e) {
      r.problems.push_back(fmt::format("{}: '{}' is not a valid regex ({})", where, t, e.what()));
    }
  }
  return out;
}

bool any_match(const std::vector<ct_target>& targets, const std::string& module) {
  for (const auto& t : targets)
    if (t.matches(module)) return true;
  return false;
}

struct ct_group {
  std::string name;
  std::vector<ct_target> targets;
  declared_format declared;
};

declared_format ct_declared(const json& g, const std::string& where, checkpoint_inspection& r) {
  const json w = g.value("weights", json::object());
  const json in = g.value("input_activations", json());
  const bool static_input = in.is_object() && in.value("dynamic", json(false)) == false;
  if (w.value("num_bits", 0) == 4) {
    if (w.value("group_size", 0) != 16)
      r.problems.push_back(fmt::format("{}.weights: group_size is {}; NVFP4 scales blocks of 16", where,
                                       w.contains("group_size") ? w["group_size"].dump() : "absent"));
    return {in.is_object() ? "NVFP4" : "W4A16_NVFP4", in.is_object()};
  }
  if (w.value("num_bits", 0) == 8)
    return {w.value("strategy", "") == "channel" ? "FP8_PER_CHANNEL_PER_TOKEN" : "FP8", static_input};
  return {fmt::format("{}-bit {}", w.value("num_bits", 0), w.value("type", "?")), false};
}

}  // namespace

void check_modelopt_config(const json& hf, const json& config_qc, checkpoint_inspection& r) {
  r.layout = "modelopt";
  const json q = hf.value("quantization", json::object());
  r.quant_algo = q.value("quant_algo", "");
  r.kv_cache_quant_algo = q.contains("kv_cache_quant_algo") && q["kv_cache_quant_algo"].is_string()
                              ? q["kv_cache_quant_algo"].get<std::string>()
                              : "";
  const bool mixed = r.quant_algo == "MIXED_PRECISION";
  if (r.quant_algo == "NVFP4" || r.quant_algo == "W4A16_NVFP4") {
    if (!q.contains("group_size"))
      r.problems.push_back(fmt::format("hf_quant_config.json: quant_algo {} needs group_size (vLLM requires the key)",
                                       r.quant_algo));
    check_group_size(q, "hf_quant_config.json", r);
  }
  const json layers = q.value("quantized_layers", json::object());
  if (mixed && layers.empty())
    r.problems.push_back("hf_quant_config.json: MIXED_PRECISION needs a non-empty quantized_layers (vLLM refuses it)");
  for (const auto& [module, entry] : layers.items())
    if (entry.value("quant_algo", "").find("NVFP4") != std::string::npos)
      check_group_size(entry, fmt::format("quantized_layers[{}]", module), r);
  check_modelopt_config_json(q, config_qc, r);

  const auto excludes = strings(q, "exclude_modules");
  const auto excluded = [&](const std::string& m) {
    for (const auto& p : excludes)
      if (glob_match(p, m)) return true;
    return false;
  };
  for (const auto& l : r.linears) {
    const bool quantized = !modelopt_algo(l.format).empty();
    if (mixed) {
      if (layers.contains(l.module))
        compare_declared(l, modelopt_declared(layers[l.module].value("quant_algo", "")), "hf_quant_config.json", r);
      else if (quantized)
        r.problems.push_back(fmt::format("{} is {} but not in quantized_layers", l.module, stored_name(l)));
    } else if (quantized && excluded(l.module)) {
      r.problems.push_back(fmt::format("{} is {} but matches exclude_modules: the runtime loads it as BF16", l.module,
                                       stored_name(l)));
    } else if (quantized) {
      compare_declared(l, modelopt_declared(r.quant_algo), "quant_algo", r);
    } else if (!excluded(l.module)) {
      r.problems.push_back(fmt::format("{} is unquantized ({}) but not in exclude_modules: the runtime will try to "
                                       "load it as {}",
                                       l.module, stored_format_name(l.format), r.quant_algo));
    }
  }
}

void check_compressed_tensors_config(const json& qc, checkpoint_inspection& r) {
  r.layout = "compressed-tensors";
  r.quant_algo = qc.value("format", "?");
  const json kv = qc.value("kv_cache_scheme", json());
  if (is_fp8_kv_scheme(kv)) r.kv_cache_quant_algo = "FP8";
  else if (!kv.is_null()) r.notes.push_back(fmt::format("kv_cache_scheme {} is not FP8: not checked", kv.dump()));

  std::vector<ct_group> groups;
  const json cg = qc.value("config_groups", json::object());
  if (!cg.is_object() || cg.empty()) r.problems.push_back("compressed-tensors quantization_config has no config_groups");
  for (const auto& [name, g] : cg.items()) {
    const std::string where = "config_groups." + name;
    groups.push_back({name, compile_targets(strings(g, "targets"), where + ".targets", r), ct_declared(g, where, r)});
  }
  const auto ignore = compile_targets(strings(qc, "ignore"), "quantization_config.ignore", r);

  for (const auto& l : r.linears) {
    std::vector<const ct_group*> hits;
    for (const auto& g : groups)
      if (any_match(g.targets, l.module)) hits.push_back(&g);
    const bool ignored = any_match(ignore, l.module);
    const bool quantized = !modelopt_algo(l.format).empty();
    if (!quantized) {
      if (!ignored)
        r.problems.push_back(fmt::format("{} is unquantized ({}) but not in ignore: vLLM {}", l.module,
                                         stored_format_name(l.format),
                                         hits.empty() ? "finds no config_groups target for it and refuses to load"
                                                      : "allocates " + hits[0]->declared.algo + " parameters for it"));
    } else if (ignored) {
      r.problems.push_back(fmt::format("{} is {} but matches ignore: vLLM loads it as BF16", l.module, stored_name(l)));
    } else if (hits.empty()) {
      r.problems.push_back(fmt::format("{} is {} but no config_groups target covers it", l.module, stored_name(l)));
    } else if (hits.size() > 1) {
      r.problems.push_back(fmt::format("{} is covered by config_groups.{} and config_groups.{}: a linear needs exactly "
                                       "one group",
                                       l.module, hits[0]->name, hits[1]->name));
    } else {
      compare_declared(l, hits[0]->declared, "config_groups." + hits[0]->name, r);
    }
  }
}

}  // namespace mixq::inspection
