// The numbers `mixq report` derives from a search record: the assignment's share per format, the
// front at the asked budget, expert coverage per MoE layer. The HTML draws them; report.json holds them.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/report/search_record.hpp"

namespace mixq {

struct format_share {
  std::string format;
  double bits = 0;
  int64_t groups = 0, weights = 0;
  double weight_share = 0;  // of all grouped weights
};

struct expert_count {
  std::string module;
  int64_t expert = 0, tokens = 0;
};

struct expert_layer {
  std::string label;  // "layer 3", or the module prefix when no layer number is found
  int64_t layer = -1;
  std::vector<expert_count> experts;  // by expert index
  int64_t zero_token_experts = 0, tokens = 0;
};

struct unavailable_format {
  std::string group, format, reason;
};

struct report_figures {
  std::vector<size_t> layer_order;         // group indices by layer, then record order
  std::vector<std::string> formats_shown;  // candidates, then anything else a group ends up in (bf16 when disabled)
  std::vector<format_share> assignment;    // per formats_shown entry
  int64_t total_weights = 0;
  double grouped_bits = 0;  // weight-weighted bits of the groups alone (excluded modules not counted)
  std::optional<record_front_point> front_at_budget;  // the front's largest-bits point within budget_bits
  std::vector<expert_layer> experts;
  std::vector<unavailable_format> unavailable;
  int64_t disabled_groups = 0;
  double total_seconds = 0;
};

// The format a group is stored in: a disabled group stays BF16.
std::string stored_format(const record_group& group);
// Bits per weight of a format: format_bits, or 16 for a bf16 that is not a candidate.
double format_bits_of(const search_record& record, const std::string& format);

report_figures derive_report_figures(const search_record& record);
nlohmann::ordered_json report_figures_to_json(const search_record& record, const report_figures& figures);

}  // namespace mixq
