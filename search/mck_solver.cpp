// solve_mck: LP relaxation by efficiency order, a greedy incumbent, Lagrangian reduction of every
// option against the incumbent, then the exact stage (mck_core) on the groups left open.
#include "search/mck_solver.hpp"

#include <algorithm>
#include <chrono>
#include <limits>

#include "search/mck_core.hpp"
#include "search/mck_prepare.hpp"

namespace mixq {

namespace {

using detail::mck_prepared;

// Bounds within this fraction of the score scale of the incumbent do not count as better: well
// above the rounding of the solver's sums (~1e-15 relative), far below any meaningful difference.
constexpr double kRelTol = 1e-12;
// The exact stage keeps 8 bytes per state: this caps it at 128 MiB.
constexpr int64_t kMaxStates = int64_t(1) << 24;

mck_solution finish(const mck_prepared& p, std::span<const int32_t> pick, std::chrono::steady_clock::time_point t0,
                    mck_solution sol) {
  sol.choice.resize(pick.size());
  sol.score = 0;
  sol.cost = 0;
  for (size_t g = 0; g < pick.size(); ++g) {
    const auto j = size_t(pick[g]);
    sol.choice[g] = p.index[j];
    sol.score += p.score[j];
    sol.cost += p.cost[j];
  }
  if (sol.proven_optimal) sol.lower_bound = sol.score;
  sol.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return sol;
}

// The groups of the exact stage for a cutoff: options with reduced cost below `keep_below` stay;
// groups left with one option are fixed to it.
struct reduction {
  struct open_group {
    size_t group;
    int64_t spread;  // cost of its dearest kept option less its cheapest
    std::vector<int32_t> options;
  };
  std::vector<int32_t> fixed;  // every group's option, for the open ones the reference
  int64_t fixed_cost = 0;      // cost and score of the fixed choices relative to the reference
  double fixed_score = 0;
  std::vector<open_group> open;
  std::vector<detail::core_group> groups;  // the open groups relative to the reference
};

// Open groups are ordered by the cost spread of their options, largest first: deciding the big
// groups first leaves the small ones, which fill the remaining capacity finely, to the LP bound of
// the suffix, which then prunes the coarse early states hardest.
reduction reduce(const mck_prepared& p, std::span<const double> reduced, std::span<const int32_t> ref,
                 double keep_below) {
  reduction red;
  red.fixed.assign(ref.begin(), ref.end());
  std::vector<int32_t> kept;
  for (size_t g = 0; g < ref.size(); ++g) {
    kept.clear();
    for (auto j = size_t(p.first[g]); j < size_t(p.first[g + 1]); ++j)
      if (reduced[j] < keep_below) kept.push_back(int32_t(j));
    if (kept.size() == 1) {
      const auto j = size_t(kept[0]), r = size_t(ref[g]);
      red.fixed[g] = kept[0];
      red.fixed_cost += p.cost[j] - p.cost[r];
      red.fixed_score += p.score[j] - p.score[r];
    } else {
      red.open.push_back({g, p.cost[size_t(kept.back())] - p.cost[size_t(kept.front())], kept});
    }
  }
  std::sort(red.open.begin(), red.open.end(), [](const auto& a, const auto& b) {
    return a.spread != b.spread ? a.spread > b.spread : a.group < b.group;
  });
  red.groups.resize(red.open.size());
  for (size_t t = 0; t < red.open.size(); ++t) {
    const auto r = size_t(ref[red.open[t].group]);
    for (int32_t j : red.open[t].options) {
      red.groups[t].dcost.push_back(p.cost[size_t(j)] - p.cost[r]);
      red.groups[t].dscore.push_back(p.score[size_t(j)] - p.score[r]);
    }
  }
  return red;
}

mck_solution solve_prepared(const mck_prepared& p, int64_t budget) {
  const auto t0 = std::chrono::steady_clock::now();
  const size_t n = p.first.size() - 1;
  std::vector<int32_t> pick(p.first.begin(), p.first.end() - 1);  // every group at its cheapest
  mck_solution sol;
  if (budget < p.cheapest_cost) {
    sol.lower_bound = std::numeric_limits<double>::infinity();  // no assignment fits at all
    return finish(p, pick, t0, sol);
  }
  sol.feasible = true;

  // LP relaxation: the steps that fit, in efficiency order; the first that does not is fractional
  // and its efficiency is the multiplier lambda. `ref` is the LP solution rounded down.
  const int64_t room = budget - p.cheapest_cost;
  const auto taken = size_t(std::upper_bound(p.step_cost_prefix.begin(), p.step_cost_prefix.end(), room) -
                            p.step_cost_prefix.begin() - 1);
  std::vector<int32_t> at(n, 0);  // hull position per group
  for (size_t i = 0; i < taken; ++i) ++at[size_t(p.steps[i].group)];
  std::vector<int32_t> ref(n);
  for (size_t g = 0; g < n; ++g) ref[g] = p.hull[size_t(p.hull_first[g] + at[g])];
  if (taken == p.steps.size()) {  // every group at its best score
    sol.proven_optimal = true;
    return finish(p, ref, t0, sol);
  }
  const int64_t slack = room - p.step_cost_prefix[taken];
  const double lambda = p.steps[taken].efficiency;
  double ref_score = 0;
  for (size_t g = 0; g < n; ++g) ref_score += p.score[size_t(ref[g])];

  // Incumbent: the rounded-down LP solution, then later steps that still fit, in efficiency order.
  std::vector<int32_t> incumbent = ref;
  double incumbent_delta = 0;  // its score minus ref's
  int64_t left = slack;
  for (size_t i = taken + 1; i < p.steps.size(); ++i) {
    const auto& s = p.steps[i];
    const auto g = size_t(s.group);
    if (at[g] != s.step || s.cost > left) continue;
    left -= s.cost;
    ++at[g];
    const auto b = p.hull[size_t(p.hull_first[g] + at[g])];
    incumbent_delta += p.score[size_t(b)] - p.score[size_t(incumbent[g])];
    incumbent[g] = b;
  }
  const double tol = kRelTol * (ref_score + p.max_score);

  // Lagrangian bound at lambda, relative to ref: sum over groups of min_j (score + lambda cost)
  // minus lambda x budget. It is valid for any lambda, so rounding in the hull cannot break it.
  // Option j of group g can be in an assignment better than the incumbent only if
  // bound + reduced(j) < incumbent.
  std::vector<double> reduced(p.cost.size());
  double bound = -lambda * double(slack);
  for (size_t g = 0; g < n; ++g) {
    const auto r = size_t(ref[g]);
    double lowest = std::numeric_limits<double>::infinity();
    for (auto j = size_t(p.first[g]); j < size_t(p.first[g + 1]); ++j) {
      reduced[j] = (p.score[j] - p.score[r]) + lambda * double(p.cost[j] - p.cost[r]);
      lowest = std::min(lowest, reduced[j]);
    }
    for (auto j = size_t(p.first[g]); j < size_t(p.first[g + 1]); ++j) reduced[j] -= lowest;
    bound += lowest;
  }
  const double gap = incumbent_delta - bound;
  sol.lower_bound = ref_score + bound;
  if (gap <= tol) {
    sol.proven_optimal = true;
    return finish(p, incumbent, t0, sol);
  }

  // The exact stage. Its work grows steeply with the cutoff (options are kept while
  // bound + reduced < cutoff), and the optimum is usually far closer to the bound than the greedy
  // incumbent is, so the cutoff starts near the bound and doubles until an assignment below it
  // is found: then it is optimal, since everything below the cutoff was searched.
  double step = std::max(gap / 1024, 4 * tol);
  double target = bound + step;
  while (true) {
    const bool last = target >= incumbent_delta;
    if (last) target = incumbent_delta;
    const auto core = reduce(p, reduced, ref, target - bound - tol);
    const auto res = detail::solve_core(core.groups, slack - core.fixed_cost, incumbent_delta - core.fixed_score,
                                        target - core.fixed_score, tol, kMaxStates);
    sol.nodes += res.states;
    if (res.improved) {
      incumbent_delta = res.best + core.fixed_score;
      incumbent = core.fixed;
      for (size_t t = 0; t < core.open.size(); ++t)
        if (res.pick[t] >= 0) incumbent[core.open[t].group] = core.open[t].options[size_t(res.pick[t])];
    }
    if (!res.complete) {
      sol.lower_bound = std::max(sol.lower_bound, ref_score + core.fixed_score + res.lower_bound);
      break;
    }
    if (last || incumbent_delta <= target) {
      sol.proven_optimal = true;
      break;
    }
    sol.lower_bound = ref_score + target - tol;  // nothing scores below the cutoff
    target = bound + (step *= 2);
  }
  return finish(p, incumbent, t0, sol);
}

}  // namespace

mck_solution solve_mck(std::span<const mck_group> groups, int64_t budget) {
  return solve_prepared(detail::prepare_mck(groups), budget);
}

std::vector<mck_solution> solve_mck_budgets(std::span<const mck_group> groups, std::span<const int64_t> budgets) {
  const auto p = detail::prepare_mck(groups);
  std::vector<mck_solution> out;
  out.reserve(budgets.size());
  for (int64_t b : budgets) out.push_back(solve_prepared(p, b));
  return out;
}

std::vector<front_point> lp_front(std::span<const mck_group> groups) {
  const auto p = detail::prepare_mck(groups);
  // Breakpoints by the number of steps taken; steps of equal efficiency lie on one segment.
  std::vector<size_t> taken{0};
  for (size_t i = 0; i < p.steps.size(); ++i)
    if (i + 1 == p.steps.size() || p.steps[i + 1].efficiency != p.steps[i].efficiency) taken.push_back(i + 1);
  // Scores summed from the best end back, so that each is accurate relative to its own size.
  double score = 0;
  for (size_t g = 0; g + 1 < p.hull_first.size(); ++g) score += p.score[size_t(p.hull[size_t(p.hull_first[g + 1] - 1)])];
  std::vector<front_point> front(taken.size());
  size_t k = p.steps.size();
  for (size_t b = taken.size(); b-- > 0;) {
    while (k > taken[b]) score += p.steps[--k].saving;
    front[b] = {p.cheapest_cost + p.step_cost_prefix[taken[b]], score};
  }
  return front;
}

}  // namespace mixq
