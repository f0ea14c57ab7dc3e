// The search stage of `mixq quantize` for a recipe with `search:`: score every group in every
// candidate format on the first score_samples calibration sequences (or reuse the scores a previous
// run stored in RUN_DIR/search.json, when its fingerprint matches), solve the budgeted assignment
// exactly, and turn it into the per-linear plan the quantize and export stages follow. The whole
// record (groups, scores, choice, the exact front at the report budgets) is written to search.json,
// and the scores and choice also to search.h5 (HDF5, beside calibration.h5).
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "calib/calibration_stats.hpp"
#include "pipeline/autoquant/search_groups.hpp"
#include "pipeline/autoquant/sensitivity.hpp"
#include "pipeline/recipe/recipe.hpp"

namespace mixq {

struct front_entry {
  double bits = 0.0;        // budget asked
  bool feasible = false;
  double achieved_bits = 0.0, score = 0.0;
  std::vector<int> choice;  // candidate per group
};

struct search_outcome {
  quant_plan plan;                  // one decision per linear of the spec
  search_space space;
  sensitivity_scores scores;
  std::vector<int> choice;          // candidate index per group
  double budget_bits = 0.0, achieved_bits = 0.0, min_bits = 0.0, max_bits = 0.0;
  bool proven_optimal = false;
  bool scores_reused = false;
  double score_seconds = 0.0, solve_seconds = 0.0;
  std::vector<front_entry> front;   // exact optimum at each report budget (search.json holds 33 more, evenly
                                    // spaced from min_bits to max_bits: the whole front from one solve)
};

// Report budgets: the asked one and 4.5, 4.8, 5.0, 5.4, 6.0, 8.0 bits.
search_outcome run_search(causal_lm& model, const recipe& r, const calibration_stats& stats,
                          std::span<const std::vector<int32_t>> sequences, const std::filesystem::path& run_dir,
                          bool resume, const progress_callback& progress = {},
                          const run_world& world = run_world::alone());

// The per-linear plan of a choice (every linear of group g gets candidate choice[g]).
quant_plan plan_of_choice(const model_spec& spec, const search_space& space, std::span<const int> choice);

// Adds measured (effective bits, perplexity) points of searched assignments, and the unquantized
// perplexity, to a search.json (what `mixq report` draws as the measured front).
void record_measured_front(const std::filesystem::path& record_file,
                           std::span<const std::pair<double, double>> points, double reference_ppl);

// Re-solves at another budget from scores (no model run): the choice and its achieved bits.
front_entry solve_budget(const model_spec& spec, const search_settings& st, const search_space& space,
                         const sensitivity_scores& scores, double bits);

}  // namespace mixq
