// Random MCKP instances for the search tests: small ones for brute force, and ones shaped like a
// real mixed-precision search (NVFP4 / MXFP4 / FP8 / BF16 per layer group, costs in quarter-bits x
// weights, scores falling with bits, BF16 scoring 0).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "search/mck_solver.hpp"

namespace mixq::test {

// 1-8 groups of 1-4 options; costs 0-20, scores multiples of 1/16 in [0, 4] so that every sum is
// exact and ties and zeros are common.
inline std::vector<mck_group> small_instance(std::mt19937_64& rng) {
  std::uniform_int_distribution<int> groups(1, 8), options(1, 4), cost(0, 20), score(0, 64);
  std::vector<mck_group> g(size_t(groups(rng)));
  for (auto& grp : g) {
    grp.options.resize(size_t(options(rng)));
    for (auto& o : grp.options) o = {score(rng) / 16.0, cost(rng)};
  }
  return g;
}

// Layer groups of 1e3-1e8 weights (log-uniform); options in quarter-bits: NVFP4 4.5 (18),
// MXFP4 4.25 (17), FP8 8 (32), BF16 16 (64). With `mxfp4` false only NVFP4 / FP8 / BF16.
inline std::vector<mck_group> structured_instance(std::mt19937_64& rng, size_t n, bool mxfp4) {
  std::uniform_real_distribution<double> log_weights(3.0, 8.0);
  std::lognormal_distribution<double> base(0.0, 1.5), noise(0.0, 0.3);
  std::vector<mck_group> g(n);
  for (auto& grp : g) {
    const auto w = int64_t(std::pow(10.0, log_weights(rng)));
    const double nvfp4 = base(rng) * double(w) * 1e-8;
    grp.options.push_back({nvfp4, 18 * w});
    if (mxfp4) grp.options.push_back({1.3 * nvfp4 * noise(rng), 17 * w});
    grp.options.push_back({0.05 * nvfp4 * noise(rng), 32 * w});
    grp.options.push_back({0.0, 64 * w});
  }
  return g;
}

inline int64_t cheapest_cost(const std::vector<mck_group>& g) {
  int64_t c = 0;
  for (const auto& grp : g) {
    int64_t m = grp.options[0].cost;
    for (const auto& o : grp.options) m = std::min(m, o.cost);
    c += m;
  }
  return c;
}

inline int64_t dearest_cost(const std::vector<mck_group>& g) {
  int64_t c = 0;
  for (const auto& grp : g) {
    int64_t m = 0;
    for (const auto& o : grp.options) m = std::max(m, o.cost);
    c += m;
  }
  return c;
}

}  // namespace mixq::test
