// solve_mck against GLPK's MIP solver on structured instances of 2000 groups x 4 options: the same
// optimum to 1e-9 relative, so mixq's answer is optimal, not just good.
#include <glpk.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "search/mck_solver.hpp"
#include "tests/search/mck_instances.hpp"

namespace mixq {
namespace {

// Binary x[g][j], one per group (a row each), the budget as one more row; minimize the score.
double glpk_optimum(const std::vector<mck_group>& g, int64_t budget) {
  glp_prob* lp = glp_create_prob();
  glp_set_obj_dir(lp, GLP_MIN);
  const int n = int(g.size());
  glp_add_rows(lp, n + 1);
  for (int i = 1; i <= n; ++i) glp_set_row_bnds(lp, i, GLP_FX, 1.0, 1.0);
  glp_set_row_bnds(lp, n + 1, GLP_UP, 0.0, double(budget));
  std::vector<int> ia{0}, ja{0};
  std::vector<double> ar{0.0};
  int col = 0;
  for (int i = 0; i < n; ++i)
    for (const auto& o : g[size_t(i)].options) {
      col = glp_add_cols(lp, 1);
      glp_set_col_kind(lp, col, GLP_BV);
      glp_set_obj_coef(lp, col, o.score);
      ia.insert(ia.end(), {i + 1, n + 1});
      ja.insert(ja.end(), {col, col});
      ar.insert(ar.end(), {1.0, double(o.cost)});
    }
  glp_load_matrix(lp, int(ia.size()) - 1, ia.data(), ja.data(), ar.data());
  glp_iocp parm;
  glp_init_iocp(&parm);
  parm.presolve = GLP_ON;
  parm.tol_obj = 1e-12;  // the default 1e-7 stops short of the optimum on these objectives
  parm.tm_lim = 120000;
  const int rc = glp_intopt(lp, &parm);
  const int status = glp_mip_status(lp);
  const double obj = glp_mip_obj_val(lp);
  glp_delete_prob(lp);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(status, GLP_OPT);
  return obj;
}

TEST(MckSolverGlpk, SameOptimumAsGlpkOn2000GroupInstances) {
  glp_term_out(GLP_OFF);
  std::mt19937_64 rng(11);
  for (int inst = 0; inst < 4; ++inst) {
    const auto g = test::structured_instance(rng, 2000, true);
    const int64_t lo = test::cheapest_cost(g), hi = test::dearest_cost(g);
    for (double f : {0.05, 0.2, 0.45}) {
      const auto B = lo + int64_t(f * double(hi - lo));
      const auto ours = solve_mck(g, B);
      ASSERT_TRUE(ours.feasible);
      EXPECT_TRUE(ours.proven_optimal);
      EXPECT_LE(ours.cost, B);
      const double want = glpk_optimum(g, B);
      EXPECT_NEAR(ours.score, want, 1e-9 * want) << "instance " << inst << " budget fraction " << f;
    }
  }
}

}  // namespace
}  // namespace mixq
