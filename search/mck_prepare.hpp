// The budget-independent part of an MCKP solve: validation, dominated options dropped, each
// group's lower convex hull, and every hull step sorted by efficiency. Internal to search/.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "search/mck_solver.hpp"

namespace mixq::detail {

// One step along a group's lower convex hull, from hull point `step` to `step + 1`.
struct hull_step {
  double efficiency;  // score saved per cost unit, > 0
  int64_t cost;       // > 0
  double saving;      // > 0
  int32_t group;
  int32_t step;
};

struct mck_prepared {
  // Group i's efficient options are [first[i], first[i+1]): cost ascending, score strictly
  // descending. Every other option is dominated (costs no less and scores no less than one of these).
  std::vector<int32_t> first;
  std::vector<int64_t> cost;
  std::vector<double> score;
  std::vector<int32_t> index;  // the option's index in the caller's group
  // Group i's hull points are hull[hull_first[i] .. hull_first[i+1]), positions into the arrays above.
  std::vector<int32_t> hull_first;
  std::vector<int32_t> hull;
  // All hull steps, efficiency descending (ties: group, then step), and their running cost.
  // Within a group efficiencies strictly decrease, so every prefix is a valid LP solution.
  std::vector<hull_step> steps;
  std::vector<int64_t> step_cost_prefix;  // steps.size() + 1 entries, from 0
  int64_t cheapest_cost = 0;              // every group at its cheapest option
  double cheapest_score = 0;
  double max_score = 0;                   // the largest efficient option score
};

// Throws std::invalid_argument as solve_mck documents.
mck_prepared prepare_mck(std::span<const mck_group> groups);

// Appends to `out` the positions (offset + i) of the lower convex hull of points sorted by cost
// ascending with strictly descending score; consecutive hull steps have strictly decreasing
// efficiency as computed by step_efficiency.
void append_lower_hull(std::span<const int64_t> cost, std::span<const double> score, int32_t offset,
                       std::vector<int32_t>& out);

inline double step_efficiency(int64_t cost_from, double score_from, int64_t cost_to, double score_to) {
  return (score_from - score_to) / double(cost_to - cost_from);
}

}  // namespace mixq::detail
