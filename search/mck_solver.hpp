// The search step of a mixed-precision recipe: each quantizable layer group picks one format, each
// format has a sensitivity score (>= 0, lower is better) and a cost (weights x effective bits), and
// the sum of scores is minimized under a budget on the summed cost. That is the multiple-choice
// knapsack problem (MCKP); solve_mck solves it exactly.
//
// Range: costs are int64 and every group's dearest option summed over all groups must stay below
// 2^62 (4.6e18), so that no sum or difference of costs formed by the solver can overflow. In
// quarter-bits x weights that is 7e16 weights at 16 bits. Larger inputs throw.
//
// Scores: "optimal" is to a relative tolerance of 1e-12 of the score scale (the incumbent's score
// plus the largest single score): a part of the search whose lower bound is within that of the
// incumbent is not explored. The tolerance sits far above the rounding error of the solver's sums.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace mixq {

struct mck_option {
  double score = 0;  // >= 0 and finite
  int64_t cost = 0;  // >= 0; callers use quarter-bits x weights so 4.25 / 4.5 / 8 / 16 bits are exact
};

struct mck_group {
  std::vector<mck_option> options;  // at least one
};

struct mck_solution {
  bool feasible = false;      // false when even the cheapest choice of every group exceeds the budget
  std::vector<int> choice;    // option index per group (the cheapest ones when infeasible)
  double score = 0;
  int64_t cost = 0;
  double lower_bound = 0;     // no assignment within the budget scores less (== score when proven)
  bool proven_optimal = false;
  int64_t nodes = 0;          // search states the exact stage created
  double seconds = 0;
};

// Minimizes the summed score subject to summed cost <= budget. Throws std::invalid_argument for a
// group without options, a negative or NaN/infinite score, a negative cost, or costs outside the
// range above. When the search's state limit is reached it returns the best assignment found with
// proven_optimal = false and lower_bound < score (the gap is score - lower_bound).
mck_solution solve_mck(std::span<const mck_group> groups, int64_t budget);

// The LP (convex-hull) front: the breakpoints of the LP relaxation's optimal score as the budget
// goes from the all-cheapest to the all-dearest assignment (of the options that are not dominated),
// cost ascending, score descending, convex. It lower-bounds the exact front at every budget.
struct front_point {
  int64_t cost;
  double score;
};
std::vector<front_point> lp_front(std::span<const mck_group> groups);

// solve_mck at each budget, sharing the budget-independent work (dominance, hulls, sorting).
std::vector<mck_solution> solve_mck_budgets(std::span<const mck_group> groups,
                                            std::span<const int64_t> budgets);

}  // namespace mixq
