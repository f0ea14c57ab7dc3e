#include "pipeline/report/search_record.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "pipeline/report/atomic_file.hpp"

namespace mixq {
namespace {

using json = nlohmann::ordered_json;

constexpr const char* kMethods[] = {"fisher", "kl", "hessian"};
constexpr const char* kKinds[] = {"attention", "mamba", "moe", "dense", "latent", "lm_head", "other"};

template <size_t N>
bool one_of(const std::string& s, const char* const (&names)[N]) {
  return std::find(std::begin(names), std::end(names), s) != std::end(names);
}

template <size_t N>
std::string listed(const char* const (&names)[N]) {
  std::string out;
  for (const char* n : names) out += (out.empty() ? "" : " | ") + std::string(n);
  return out;
}

// A value in the document and its JSON path, so every complaint says where it is.
class node {
 public:
  node(const json& value, std::string path, const std::string& source)
      : value_(value), path_(std::move(path)), source_(source) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw search_record_error(fmt::format("{}: {} {}", source_, path_.empty() ? "document" : path_, what));
  }

  bool has(const char* key) const { return value_.is_object() && value_.contains(key) && !value_[key].is_null(); }

  node at(const char* key) const {
    if (!value_.is_object()) fail("must be an object");
    const std::string child = child_path(key);
    if (!value_.contains(key)) throw search_record_error(fmt::format("{}: {} is missing", source_, child));
    return node(value_[key], child, source_);
  }

  std::string str() const {
    if (!value_.is_string()) fail("must be a string");
    return value_.get<std::string>();
  }
  double number() const {
    if (!value_.is_number()) fail("must be a number");
    const double v = value_.get<double>();
    if (!std::isfinite(v)) fail("must be finite");
    return v;
  }
  int64_t integer() const {
    if (!value_.is_number_integer()) fail("must be an integer");
    return value_.get<int64_t>();
  }
  bool boolean() const {
    if (!value_.is_boolean()) fail("must be true or false");
    return value_.get<bool>();
  }

  std::vector<node> elements() const {
    if (!value_.is_array()) fail("must be an array");
    std::vector<node> out;
    for (size_t i = 0; i < value_.size(); ++i) out.emplace_back(value_[i], fmt::format("{}[{}]", path_, i), source_);
    return out;
  }
  std::vector<std::pair<std::string, node>> members() const {
    if (!value_.is_object()) fail("must be an object");
    std::vector<std::pair<std::string, node>> out;
    for (const auto& [key, v] : value_.items()) out.emplace_back(key, node(v, child_path(key), source_));
    return out;
  }

  // Absent and null read as empty, so optional collections need no special case.
  std::vector<node> optional_elements(const char* key) const {
    return has(key) ? at(key).elements() : std::vector<node>{};
  }
  std::vector<std::pair<std::string, node>> optional_members(const char* key) const {
    return has(key) ? at(key).members() : std::vector<std::pair<std::string, node>>{};
  }

  const std::string& path() const { return path_; }

 private:
  // Module names hold dots, so keys that are not plain identifiers are quoted.
  std::string child_path(const std::string& key) const {
    const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](unsigned char c) {
      return std::isalnum(c) || c == '_';
    });
    if (plain) return path_.empty() ? key : path_ + "." + key;
    return fmt::format("{}[{}]", path_, json(key).dump());
  }

  const json& value_;
  std::string path_;
  const std::string& source_;
};

record_group parse_group(const node& g, const search_record& r) {
  record_group out;
  out.name = g.at("name").str();
  out.kind = g.at("kind").str();
  if (!one_of(out.kind, kKinds)) g.at("kind").fail(fmt::format("must be one of {}, not \"{}\"", listed(kKinds), out.kind));
  out.layer = g.at("layer").integer();
  for (const node& m : g.at("modules").elements()) out.modules.push_back(m.str());
  out.weights = g.at("weights").integer();
  if (out.weights < 0) g.at("weights").fail("must not be negative");
  const auto is_candidate = [&](const std::string& f) {
    return std::find(r.formats.begin(), r.formats.end(), f) != r.formats.end();
  };
  for (const auto& [format, score] : g.at("scores").members()) {
    if (!is_candidate(format)) score.fail("names a format that is not in formats");
    out.scores[format] = score.number();
  }
  for (const auto& [format, why] : g.optional_members("unavailable")) out.unavailable[format] = why.str();
  out.disabled = g.has("disabled") && g.at("disabled").boolean();
  if (g.has("disabled_reason")) out.disabled_reason = g.at("disabled_reason").str();
  out.chosen = g.at("chosen").str();
  // A disabled group is kept BF16 and may name no candidate; an enabled one holds one it has a score for.
  if (!out.disabled && !out.scores.contains(out.chosen))
    g.at("chosen").fail(fmt::format("\"{}\" must be a format this group has a score for", out.chosen));
  return out;
}

}  // namespace

search_record parse_search_record(const json& doc, const std::string& source) {
  const node root(doc, "", source);
  if (!doc.is_object()) root.fail("must be a JSON object");
  search_record r;
  r.model = root.at("model").str();
  r.architecture = root.at("architecture").str();
  r.method = root.at("method").str();
  if (!one_of(r.method, kMethods))
    root.at("method").fail(fmt::format("must be one of {}, not \"{}\"", listed(kMethods), r.method));
  for (const node& f : root.at("formats").elements()) r.formats.push_back(f.str());
  if (r.formats.empty()) root.at("formats").fail("must name at least one format");
  const node bits = root.at("format_bits");
  for (const std::string& f : r.formats) {
    if (!bits.has(f.c_str())) bits.fail(fmt::format("is missing candidate format \"{}\"", f));
    r.format_bits[f] = bits.at(f.c_str()).number();
  }
  if (root.has("cost")) {
    r.cost = root.at("cost").str();
    if (r.cost != "weight" && r.cost != "active_moe") root.at("cost").fail(fmt::format("must be weight or active_moe, not \"{}\"", r.cost));
  }
  r.budget_bits = root.at("budget_bits").number();
  r.effective_bits = root.at("effective_bits").number();
  for (const char* key : {"budget_bits", "effective_bits"})  // (bits per weight: a budget above 32 is no budget)
    if (const double v = root.at(key).number(); !(v > 0.0 && v <= 32.0)) root.at(key).fail("must be above 0 and at most 32");
  r.score_samples = root.at("score_samples").integer();
  r.score_tokens = root.at("score_tokens").integer();
  for (const auto& [stage, s] : root.optional_members("seconds")) r.seconds.emplace_back(stage, s.number());
  for (const node& g : root.at("groups").elements()) r.groups.push_back(parse_group(g, r));
  for (const node& p : root.optional_elements("front")) r.front.push_back({p.at("bits").number(), p.at("score").number()});
  for (const node& p : root.optional_elements("measured"))
    r.measured.push_back({p.at("bits").number(), p.at("ppl").number(), p.at("searched").boolean(), p.at("label").str()});
  if (root.has("reference_ppl")) r.reference_ppl = root.at("reference_ppl").number();
  for (const auto& [expert, tokens] : root.optional_members("expert_tokens")) {
    r.expert_tokens[expert] = tokens.integer();
    if (r.expert_tokens[expert] < 0) tokens.fail("must not be negative");
  }
  for (const node& e : root.optional_elements("excluded")) r.excluded.push_back({e.at("module").str(), e.at("reason").str()});
  return r;
}

search_record read_search_record(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw search_record_error(fmt::format("{}: cannot open", path.string()));
  std::stringstream text;
  text << in.rdbuf();
  json doc;
  try {
    doc = json::parse(text.str());
  } catch (const json::parse_error& e) {
    throw search_record_error(fmt::format("{}: not valid JSON ({})", path.string(), e.what()));
  }
  return parse_search_record(doc, path.string());
}

json search_record_to_json(const search_record& r) {
  json j;
  j["model"] = r.model;
  j["architecture"] = r.architecture;
  j["method"] = r.method;
  j["formats"] = r.formats;
  j["format_bits"] = json::object();
  for (const std::string& f : r.formats) j["format_bits"][f] = r.format_bits.at(f);
  j["cost"] = r.cost;
  j["budget_bits"] = r.budget_bits;
  j["effective_bits"] = r.effective_bits;
  j["score_samples"] = r.score_samples;
  j["score_tokens"] = r.score_tokens;
  j["seconds"] = json::object();
  for (const auto& [stage, s] : r.seconds) j["seconds"][stage] = s;
  j["groups"] = json::array();
  for (const record_group& g : r.groups) {
    json o;
    o["name"] = g.name;
    o["kind"] = g.kind;
    o["layer"] = g.layer;
    o["modules"] = g.modules;
    o["weights"] = g.weights;
    o["scores"] = json::object();
    for (const auto& [f, s] : g.scores) o["scores"][f] = s;
    o["unavailable"] = json::object();
    for (const auto& [f, why] : g.unavailable) o["unavailable"][f] = why;
    o["chosen"] = g.chosen;
    o["disabled"] = g.disabled;
    o["disabled_reason"] = g.disabled_reason;
    j["groups"].push_back(std::move(o));
  }
  j["front"] = json::array();
  for (const record_front_point& p : r.front) j["front"].push_back({{"bits", p.bits}, {"score", p.score}});
  j["measured"] = json::array();
  for (const measured_point& p : r.measured)
    j["measured"].push_back({{"bits", p.bits}, {"ppl", p.ppl}, {"searched", p.searched}, {"label", p.label}});
  if (r.reference_ppl) j["reference_ppl"] = *r.reference_ppl;
  j["expert_tokens"] = json::object();
  for (const auto& [expert, tokens] : r.expert_tokens) j["expert_tokens"][expert] = tokens;
  j["excluded"] = json::array();
  for (const excluded_module& e : r.excluded) j["excluded"].push_back({{"module", e.module}, {"reason", e.reason}});
  return j;
}

void write_search_record(const std::filesystem::path& path, const search_record& record) {
  write_file_atomically(path, search_record_to_json(record).dump(2) + "\n");
}

}  // namespace mixq
