// The exact stage of the MCKP solve: the groups the Lagrangian reduction left open, searched by a
// dominance-pruned Pareto dynamic program (Nemhauser-Ullmann lists) with an LP bound on every state.
// Internal to search/.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace mixq::detail {

// An open group's remaining options relative to a reference assignment (cost and score
// differences): cost ascending, score strictly descending.
struct core_group {
  std::vector<int64_t> dcost;
  std::vector<double> dscore;
};

struct core_result {
  bool improved = false;       // found an assignment scoring below `incumbent`
  double best = 0;             // the best objective found (the incumbent when not improved)
  std::vector<int32_t> pick;   // when improved: per group an option index, or -1 for the reference option
  bool complete = false;       // the search ran to the end: nothing scores below min(best, cutoff) - tol
  double lower_bound = 0;      // no assignment scores below this (less tol)
  int64_t states = 0;
};

// Minimizes the summed dscore subject to summed dcost <= slack, one option per group; the reference
// option (dcost 0, dscore 0) is a valid choice for every group too, which gives every state a
// cheap completion to try against the incumbent. Groups are decided
// in the order given; a state whose LP bound is not below min(incumbent, cutoff) - tol is dropped.
// Stops with complete = false once `max_states` states were created.
core_result solve_core(std::span<const core_group> groups, int64_t slack, double incumbent, double cutoff,
                       double tol, int64_t max_states);

}  // namespace mixq::detail
