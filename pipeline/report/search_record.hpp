// search.json: what a mixed-precision search leaves in its run directory — the candidates, every
// group's sensitivity per format, the chosen assignment, the score/bits front and measured
// perplexities. The search writes it with write_search_record; `mixq report` reads it back.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace mixq {

// A malformed search.json; the message names the file and the JSON path ("groups[3].scores.fp8").
struct search_record_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A set of linears that the search gives one format (e.g. a layer's q/k/v projections).
struct record_group {
  std::string name;
  std::string kind;  // attention | mamba | moe | dense | latent | lm_head | other
  int64_t layer = 0;  // negative for groups outside the layer stack
  std::vector<std::string> modules;
  int64_t weights = 0;
  std::map<std::string, double> scores;            // format -> sensitivity, only formats the group can hold
  std::map<std::string, std::string> unavailable;  // format -> why the group cannot hold it
  std::string chosen;
  bool disabled = false;  // kept BF16 whatever the budget
  std::string disabled_reason;
};

struct record_front_point {
  double bits = 0, score = 0;
};

struct measured_point {
  double bits = 0, ppl = 0;
  bool searched = false;  // a searched assignment, as opposed to a baseline
  std::string label;
};

struct excluded_module {
  std::string module, reason;
};

struct search_record {
  std::string model, architecture;
  std::string method;  // fisher | kl | hessian
  std::vector<std::string> formats;
  std::map<std::string, double> format_bits;
  std::string cost = "weight";  // weight | active_moe: what budget_bits and effective_bits count
  double budget_bits = 0, effective_bits = 0;
  int64_t score_samples = 0, score_tokens = 0;
  std::vector<std::pair<std::string, double>> seconds;  // stage -> wall time, in run order
  std::vector<record_group> groups;
  std::vector<record_front_point> front;  // optimum score per budget, ascending bits
  std::vector<measured_point> measured;
  std::optional<double> reference_ppl;           // unquantized model
  std::map<std::string, int64_t> expert_tokens;  // expert module -> calibration tokens routed to it
  std::vector<excluded_module> excluded;
};

// `source` names the document in error messages (normally the file path).
search_record parse_search_record(const nlohmann::ordered_json& doc, const std::string& source);
search_record read_search_record(const std::filesystem::path& path);

nlohmann::ordered_json search_record_to_json(const search_record& record);
// Atomic: written to a temporary file beside `path`, then renamed over it.
void write_search_record(const std::filesystem::path& path, const search_record& record);

}  // namespace mixq
