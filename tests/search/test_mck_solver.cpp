// solve_mck against brute force on thousands of small instances and on structured ones shaped like
// the real search; solve_mck_budgets against solve_mck; lp_front's shape and that it lower-bounds
// the exact optimum; bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "search/mck_solver.hpp"
#include "tests/search/mck_instances.hpp"

namespace mixq {
namespace {

struct brute_result {
  bool feasible = false;
  double score = std::numeric_limits<double>::infinity();
};

// Every assignment; scores summed in group order, as solve_mck sums its answer.
brute_result brute_force(const std::vector<mck_group>& g, int64_t budget) {
  brute_result best;
  std::vector<size_t> pick(g.size(), 0);
  while (true) {
    int64_t cost = 0;
    double score = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      cost += g[i].options[pick[i]].cost;
      score += g[i].options[pick[i]].score;
    }
    if (cost <= budget) {
      best.feasible = true;
      best.score = std::min(best.score, score);
    }
    size_t i = 0;
    while (i < g.size() && ++pick[i] == g[i].options.size()) pick[i++] = 0;
    if (i == g.size()) return best;
  }
}

// The choice is in range, within the budget, and reproduces the reported cost and score.
void expect_consistent(const std::vector<mck_group>& g, int64_t budget, const mck_solution& s) {
  ASSERT_EQ(s.choice.size(), g.size());
  int64_t cost = 0;
  double score = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_GE(s.choice[i], 0);
    ASSERT_LT(size_t(s.choice[i]), g[i].options.size());
    cost += g[i].options[size_t(s.choice[i])].cost;
    score += g[i].options[size_t(s.choice[i])].score;
  }
  EXPECT_EQ(cost, s.cost);
  EXPECT_EQ(score, s.score);
  if (s.feasible) {
    EXPECT_LE(cost, budget);
    EXPECT_LE(s.lower_bound, s.score);
  }
}

// The LP front at `cost` by linear interpolation between breakpoints.
double front_at(const std::vector<front_point>& f, int64_t cost) {
  if (cost >= f.back().cost) return f.back().score;
  for (size_t i = 1; i < f.size(); ++i)
    if (cost <= f[i].cost) {
      const double t = double(cost - f[i - 1].cost) / double(f[i].cost - f[i - 1].cost);
      return f[i - 1].score + t * (f[i].score - f[i - 1].score);
    }
  return f.back().score;
}

TEST(MckSolver, MatchesBruteForceOnSmallRandomInstances) {
  std::mt19937_64 rng(1);
  int infeasible = 0, solved = 0;
  for (int inst = 0; inst < 4000; ++inst) {
    const auto g = test::small_instance(rng);
    const int64_t lo = test::cheapest_cost(g), hi = test::dearest_cost(g);
    std::uniform_int_distribution<int64_t> budget(lo - 3, hi + 3);
    for (int b = 0; b < 4; ++b) {
      const int64_t B = budget(rng);
      const auto want = brute_force(g, B);
      const auto got = solve_mck(g, B);
      SCOPED_TRACE(::testing::Message() << "instance " << inst << " budget " << B);
      expect_consistent(g, B, got);
      ASSERT_EQ(got.feasible, want.feasible);
      if (!want.feasible) {
        ++infeasible;
        continue;
      }
      ++solved;
      EXPECT_TRUE(got.proven_optimal);
      ASSERT_EQ(got.score, want.score);
      EXPECT_EQ(got.lower_bound, got.score);
    }
  }
  EXPECT_GT(infeasible, 100);
  EXPECT_GT(solved, 10000);
}

TEST(MckSolver, MatchesBruteForceOnStructuredInstances) {
  std::mt19937_64 rng(2);
  for (int inst = 0; inst < 40; ++inst) {
    const auto g = test::structured_instance(rng, inst % 2 ? 9 : 11, inst % 2 == 1);
    const int64_t lo = test::cheapest_cost(g), hi = test::dearest_cost(g);
    for (double f : {0.0, 0.1, 0.3, 0.5, 0.8, 1.0}) {
      const auto B = lo + int64_t(f * double(hi - lo));
      const auto want = brute_force(g, B);
      const auto got = solve_mck(g, B);
      SCOPED_TRACE(::testing::Message() << "instance " << inst << " budget fraction " << f);
      expect_consistent(g, B, got);
      ASSERT_TRUE(got.feasible);
      EXPECT_TRUE(got.proven_optimal);
      EXPECT_NEAR(got.score, want.score, 1e-12 * want.score);
    }
  }
}

TEST(MckSolver, ProvesLargeStructuredInstancesOptimal) {
  std::mt19937_64 rng(3);
  const auto g = test::structured_instance(rng, 20000, true);
  const int64_t lo = test::cheapest_cost(g), hi = test::dearest_cost(g);
  for (double f : {0.1, 0.25, 0.5}) {
    const auto B = lo + int64_t(f * double(hi - lo));
    const auto s = solve_mck(g, B);
    expect_consistent(g, B, s);
    EXPECT_TRUE(s.proven_optimal) << f;
    EXPECT_EQ(s.lower_bound, s.score);
  }
}

// Weights over five decades at a tight budget: the LP bound sits far below the optimum and the
// search stops at its state limit. The answer is still feasible and its gap is reported.
TEST(MckSolver, ReportsTheGapWhenTheSearchStopsEarly) {
  std::mt19937_64 rng(3);
  const auto g = test::structured_instance(rng, 20000, true);
  const int64_t lo = test::cheapest_cost(g), hi = test::dearest_cost(g);
  const auto B = lo + int64_t(0.02 * double(hi - lo));
  const auto s = solve_mck(g, B);
  expect_consistent(g, B, s);
  ASSERT_TRUE(s.feasible);
  if (!s.proven_optimal) {
    EXPECT_LT(s.lower_bound, s.score);
    EXPECT_GT(s.lower_bound, 0.99 * s.score);
  }
  const auto front = lp_front(g);
  EXPECT_GE(s.lower_bound, front_at(front, B) * (1 - 1e-12));
}

TEST(MckSolver, BudgetsShareWorkAndAgreeWithSingleSolves) {
  std::mt19937_64 rng(4);
  for (int inst = 0; inst < 200; ++inst) {
    const auto g = inst % 2 ? test::small_instance(rng) : test::structured_instance(rng, 50, inst % 4 == 0);
    const int64_t lo = test::cheapest_cost(g), hi = test::dearest_cost(g);
    std::vector<int64_t> budgets{lo - 1, lo, hi, hi + 1};
    for (int i = 1; i < 8; ++i) budgets.push_back(lo + (hi - lo) * i / 8);
    const auto all = solve_mck_budgets(g, budgets);
    ASSERT_EQ(all.size(), budgets.size());
    for (size_t b = 0; b < budgets.size(); ++b) {
      const auto one = solve_mck(g, budgets[b]);
      EXPECT_EQ(all[b].feasible, one.feasible);
      EXPECT_EQ(all[b].choice, one.choice);
      EXPECT_EQ(all[b].score, one.score);
      EXPECT_EQ(all[b].proven_optimal, one.proven_optimal);
    }
  }
}

TEST(MckSolver, LpFrontIsConvexMonotoneAndBelowTheExactFront) {
  std::mt19937_64 rng(5);
  for (int inst = 0; inst < 100; ++inst) {
    const auto g = test::structured_instance(rng, 1 + size_t(inst % 40), inst % 2 == 0);
    const auto f = lp_front(g);
    ASSERT_GE(f.size(), 2u);
    // BF16 is the dearest option of every group and scores 0: the front ends at all-BF16.
    EXPECT_EQ(f.front().cost, test::cheapest_cost(g));
    EXPECT_EQ(f.back().cost, test::dearest_cost(g));
    EXPECT_EQ(f.back().score, 0.0);
    double prev_slope = -std::numeric_limits<double>::infinity();
    for (size_t i = 1; i < f.size(); ++i) {
      ASSERT_GT(f[i].cost, f[i - 1].cost);
      ASSERT_LT(f[i].score, f[i - 1].score);
      const double slope = (f[i].score - f[i - 1].score) / double(f[i].cost - f[i - 1].cost);
      EXPECT_GT(slope, prev_slope * (1 + 1e-9));
      prev_slope = slope;
    }
    const int64_t lo = f.front().cost, hi = f.back().cost;
    std::vector<int64_t> budgets;
    for (int i = 0; i <= 16; ++i) budgets.push_back(lo + (hi - lo) * i / 16);
    const auto exact = solve_mck_budgets(g, budgets);
    for (size_t b = 0; b < budgets.size(); ++b) {
      ASSERT_TRUE(exact[b].proven_optimal);
      EXPECT_LE(front_at(f, budgets[b]), exact[b].score * (1 + 1e-12));
      EXPECT_LE(exact[b].lower_bound, exact[b].score);
    }
  }
}

TEST(MckSolver, DominatedOptionsAndEdgeCases) {
  // Zero groups: feasible at any budget >= 0.
  EXPECT_TRUE(solve_mck({}, 0).feasible);
  EXPECT_FALSE(solve_mck({}, -1).feasible);
  // A dominated option (dearer and no better) is never chosen; equal options pick one.
  const std::vector<mck_group> g{{{{1.0, 4}, {2.0, 6}, {0.5, 8}}}, {{{0.0, 3}, {0.0, 3}}}};
  const auto s = solve_mck(g, 20);
  EXPECT_TRUE(s.proven_optimal);
  EXPECT_EQ(s.choice[0], 2);
  EXPECT_EQ(s.score, 0.5);
  const auto tight = solve_mck(g, 7);
  EXPECT_EQ(tight.choice[0], 0);
  EXPECT_EQ(tight.cost, 7);
  // Infeasible: the cheapest choices, flagged.
  const auto none = solve_mck(g, 6);
  EXPECT_FALSE(none.feasible);
  EXPECT_EQ(none.cost, 7);
  EXPECT_EQ(lp_front(g).front().cost, 7);
}

TEST(MckSolver, RejectsBadInput) {
  using G = std::vector<mck_group>;
  EXPECT_THROW(solve_mck(G{{{}}}, 10), std::invalid_argument);
  EXPECT_THROW(solve_mck(G{{{{1.0, -1}}}}, 10), std::invalid_argument);
  EXPECT_THROW(solve_mck(G{{{{-0.5, 1}}}}, 10), std::invalid_argument);
  EXPECT_THROW(solve_mck(G{{{{std::nan(""), 1}}}}, 10), std::invalid_argument);
  EXPECT_THROW(solve_mck(G{{{{std::numeric_limits<double>::infinity(), 1}}}}, 10), std::invalid_argument);
  const int64_t big = int64_t(1) << 61;
  EXPECT_THROW(solve_mck(G{{{{1.0, big}}}, {{{1.0, big}}}}, 10), std::invalid_argument);
  EXPECT_NO_THROW(solve_mck(G{{{{1.0, big - 1}}}, {{{1.0, big}}}}, 10));
  EXPECT_THROW(lp_front(G{{{}}}), std::invalid_argument);
  const std::vector<int64_t> budgets{1};
  EXPECT_THROW(solve_mck_budgets(G{{{}}}, budgets), std::invalid_argument);
}

}  // namespace
}  // namespace mixq
