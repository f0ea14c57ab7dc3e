// The mixed-precision search's solver on instances shaped like a large MoE model: 100k and 1M
// layer groups x 4 formats (NVFP4 4.5, MXFP4 4.25, FP8 8, BF16 16 bits), 90% experts of 2-8M
// weights and the rest 16-64M, NVFP4 scores lognormal, MXFP4 ~1.3x and FP8 ~0.05x NVFP4 with
// lognormal noise, BF16 0. Budgets in effective bits per weight. The yardstick is the LP
// relaxation alone (one sorted pass), measured in the same run: exactness costs its ratio to it.
//
//   build/bench/bench_mck_solver
#include <benchmark/benchmark.h>

#include <map>
#include <random>
#include <vector>

#include "search/mck_solver.hpp"

namespace {

using namespace mixq;

struct instance {
  std::vector<mck_group> groups;
  int64_t weights = 0;
};

const instance& model(size_t n) {
  static std::map<size_t, instance> cache;
  auto [it, fresh] = cache.try_emplace(n);
  if (!fresh) return it->second;
  std::mt19937_64 rng(42 + n);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  std::uniform_int_distribution<int64_t> expert(2'000'000, 8'000'000), dense(16'000'000, 64'000'000);
  std::lognormal_distribution<double> nvfp4(-2.0, 1.0), noise(0.0, 0.25);
  auto& inst = it->second;
  inst.groups.resize(n);
  for (auto& g : inst.groups) {
    const int64_t w = unit(rng) < 0.9 ? expert(rng) : dense(rng);
    inst.weights += w;
    const double s = nvfp4(rng);
    // Costs in quarter-bits x weights.
    g.options = {{s, 18 * w}, {1.3 * s * noise(rng), 17 * w}, {0.05 * s * noise(rng), 32 * w}, {0.0, 64 * w}};
  }
  return inst;
}

int64_t budget_for(const instance& inst, double bits) { return int64_t(bits * 4.0 * double(inst.weights)); }

void BM_solve_mck(benchmark::State& state) {
  const auto& inst = model(size_t(state.range(0)));
  const double bits = double(state.range(1)) / 10.0;
  const int64_t budget = budget_for(inst, bits);
  mck_solution s;
  for (auto _ : state) benchmark::DoNotOptimize(s = solve_mck(inst.groups, budget));
  state.counters["proven"] = s.proven_optimal;
  state.counters["gap"] = s.score - s.lower_bound;
  state.counters["nodes"] = double(s.nodes);
  state.counters["bits"] = double(s.cost) / 4.0 / double(inst.weights);
}

void BM_solve_mck_4_budgets(benchmark::State& state) {
  const auto& inst = model(size_t(state.range(0)));
  std::vector<int64_t> budgets;
  for (double bits : {4.8, 5.0, 5.4, 6.0}) budgets.push_back(budget_for(inst, bits));
  bool proven = true;
  for (auto _ : state) {
    const auto all = solve_mck_budgets(inst.groups, budgets);
    for (const auto& s : all) proven = proven && s.proven_optimal;
    benchmark::DoNotOptimize(all.data());
  }
  state.counters["proven"] = proven;
}

void BM_lp_front(benchmark::State& state) {
  const auto& inst = model(size_t(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(lp_front(inst.groups).size());
}

void sizes_and_bits(benchmark::internal::Benchmark* b) {
  for (int64_t n : {100'000, 1'000'000})
    for (int64_t tenths : {48, 50, 54, 60}) b->Args({n, tenths});
}

BENCHMARK(BM_lp_front)->Arg(100'000)->Arg(1'000'000)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_solve_mck)->Apply(sizes_and_bits)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_solve_mck_4_budgets)->Arg(100'000)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
