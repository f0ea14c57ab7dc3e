#include "pipeline/report/report_figures.hpp"

#include <algorithm>
#include <cctype>
#include <limits>
#include <numeric>

#include <fmt/format.h>

namespace mixq {
namespace {

using json = nlohmann::ordered_json;

// The number after `marker` in a module name ("layers.", "experts."), or -1.
int64_t number_after(const std::string& name, const std::string& marker) {
  const size_t at = name.rfind(marker);
  if (at == std::string::npos) return -1;
  size_t i = at + marker.size();
  int64_t n = 0;
  const size_t digits_from = i;
  while (i < name.size() && std::isdigit(static_cast<unsigned char>(name[i]))) n = n * 10 + (name[i++] - '0');
  return i == digits_from ? -1 : n;
}

std::vector<expert_layer> expert_layers(const search_record& r) {
  std::map<std::string, expert_layer> by_prefix;
  for (const auto& [module, tokens] : r.expert_tokens) {
    const size_t at = module.rfind("experts.");
    const std::string prefix = at == std::string::npos ? module : module.substr(0, at);
    expert_layer& l = by_prefix[prefix];
    l.layer = number_after(module, "layers.");
    const bool mtp = module.starts_with("mtp.");  // (the MTP head numbers its own layers from 0)
    l.label = l.layer >= 0 ? fmt::format("{}layer {}", mtp ? "MTP " : "", l.layer) : prefix;
    l.experts.push_back({module, number_after(module, "experts."), tokens});
    l.tokens += tokens;
    l.zero_token_experts += tokens == 0;
  }
  std::vector<expert_layer> out;
  for (auto& [prefix, l] : by_prefix) {
    std::sort(l.experts.begin(), l.experts.end(),
              [](const expert_count& a, const expert_count& b) { return a.expert < b.expert; });
    out.push_back(std::move(l));
  }
  std::stable_sort(out.begin(), out.end(), [](const expert_layer& a, const expert_layer& b) {  // (the MTP head last)
    return std::pair(a.label.starts_with("MTP"), a.layer) < std::pair(b.label.starts_with("MTP"), b.layer);
  });
  return out;
}

}  // namespace

std::string stored_format(const record_group& group) { return group.disabled ? "bf16" : group.chosen; }

double format_bits_of(const search_record& record, const std::string& format) {
  const auto it = record.format_bits.find(format);
  if (it != record.format_bits.end()) return it->second;
  return format == "bf16" ? 16.0 : std::numeric_limits<double>::quiet_NaN();
}

report_figures derive_report_figures(const search_record& r) {
  report_figures f;
  f.layer_order.resize(r.groups.size());
  std::iota(f.layer_order.begin(), f.layer_order.end(), size_t{0});
  // Groups outside the stack (negative layer: lm_head, embeddings) come after the last layer.
  const auto rank = [&](size_t i) {
    const int64_t layer = r.groups[i].layer;
    return layer < 0 ? std::numeric_limits<int64_t>::max() : layer;
  };
  std::stable_sort(f.layer_order.begin(), f.layer_order.end(), [&](size_t a, size_t b) { return rank(a) < rank(b); });

  f.formats_shown = r.formats;
  for (const record_group& g : r.groups)
    if (std::find(f.formats_shown.begin(), f.formats_shown.end(), stored_format(g)) == f.formats_shown.end())
      f.formats_shown.push_back(stored_format(g));
  for (const std::string& format : f.formats_shown) f.assignment.push_back({format, format_bits_of(r, format), 0, 0, 0});

  double bit_sum = 0;
  for (const record_group& g : r.groups) {
    const std::string format = stored_format(g);
    const auto it = std::find_if(f.assignment.begin(), f.assignment.end(),
                                 [&](const format_share& s) { return s.format == format; });
    it->groups += 1;
    it->weights += g.weights;
    f.total_weights += g.weights;
    bit_sum += double(g.weights) * it->bits;
    f.disabled_groups += g.disabled;
    for (const auto& [candidate, reason] : g.unavailable) f.unavailable.push_back({g.name, candidate, reason});
  }
  for (format_share& s : f.assignment)
    s.weight_share = f.total_weights > 0 ? double(s.weights) / double(f.total_weights) : 0;
  f.grouped_bits = f.total_weights > 0 ? bit_sum / double(f.total_weights) : 0;

  for (const record_front_point& p : r.front)
    if (p.bits <= r.budget_bits + 1e-9 && (!f.front_at_budget || p.bits >= f.front_at_budget->bits)) f.front_at_budget = p;
  f.experts = expert_layers(r);
  for (const auto& [stage, s] : r.seconds) f.total_seconds += s;
  return f;
}

json report_figures_to_json(const search_record& r, const report_figures& f) {
  json j;
  j["model"] = r.model;
  j["architecture"] = r.architecture;
  j["method"] = r.method;
  j["formats"] = r.formats;
  j["cost"] = r.cost;
  j["budget_bits"] = r.budget_bits;
  j["effective_bits"] = r.effective_bits;
  j["grouped_bits"] = f.grouped_bits;
  j["score_samples"] = r.score_samples;
  j["score_tokens"] = r.score_tokens;
  j["seconds"] = json::object();
  for (const auto& [stage, s] : r.seconds) j["seconds"][stage] = s;
  j["seconds"]["total"] = f.total_seconds;
  j["reference_ppl"] = r.reference_ppl ? json(*r.reference_ppl) : json(nullptr);
  j["groups"] = r.groups.size();
  j["weights"] = f.total_weights;
  j["disabled_groups"] = f.disabled_groups;
  j["assignment"] = json::array();
  for (const format_share& s : f.assignment)
    j["assignment"].push_back(
        {{"format", s.format}, {"bits", s.bits}, {"groups", s.groups}, {"weights", s.weights}, {"weight_share", s.weight_share}});
  j["front_points"] = r.front.size();
  j["front_at_budget"] = f.front_at_budget ? json{{"bits", f.front_at_budget->bits}, {"score", f.front_at_budget->score}}
                                           : json(nullptr);
  j["measured"] = json::array();
  for (const measured_point& p : r.measured) {
    json m{{"label", p.label}, {"bits", p.bits}, {"ppl", p.ppl}, {"searched", p.searched}};
    if (r.reference_ppl) m["ppl_increase"] = p.ppl - *r.reference_ppl;
    j["measured"].push_back(std::move(m));
  }
  j["expert_coverage"] = json::array();
  for (const expert_layer& l : f.experts) {
    json zero = json::array();
    for (const expert_count& e : l.experts)
      if (e.tokens == 0) zero.push_back(e.module);
    j["expert_coverage"].push_back({{"label", l.label},
                                    {"layer", l.layer},
                                    {"experts", l.experts.size()},
                                    {"tokens", l.tokens},
                                    {"zero_token_experts", l.zero_token_experts},
                                    {"zero_token_modules", std::move(zero)}});
  }
  j["excluded"] = json::array();
  for (const excluded_module& e : r.excluded) j["excluded"].push_back({{"module", e.module}, {"reason", e.reason}});
  j["disabled"] = json::array();
  for (const record_group& g : r.groups)
    if (g.disabled) j["disabled"].push_back({{"group", g.name}, {"reason", g.disabled_reason}});
  j["unavailable"] = json::array();
  for (const unavailable_format& u : f.unavailable)
    j["unavailable"].push_back({{"group", u.group}, {"format", u.format}, {"reason", u.reason}});
  return j;
}

}  // namespace mixq
