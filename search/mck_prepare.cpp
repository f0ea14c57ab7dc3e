#include "search/mck_prepare.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace mixq::detail {

namespace {

// Costs of every group's dearest option summed stay below this, so sums and differences of costs
// formed anywhere in the solver fit an int64.
constexpr int64_t kMaxTotalCost = int64_t(1) << 62;

void validate(std::span<const mck_group> groups) {
  int64_t total = 0;
  size_t options = 0;  // option positions are int32
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& opts = groups[g].options;
    if (opts.empty()) throw std::invalid_argument("solve_mck: group " + std::to_string(g) + " has no options");
    options += opts.size();
    if (options > size_t(INT32_MAX)) throw std::invalid_argument("solve_mck: more than 2^31 options");
    int64_t dearest = 0;
    for (const auto& o : opts) {
      if (!std::isfinite(o.score) || o.score < 0)
        throw std::invalid_argument("solve_mck: group " + std::to_string(g) + " has a negative or non-finite score");
      if (o.cost < 0) throw std::invalid_argument("solve_mck: group " + std::to_string(g) + " has a negative cost");
      dearest = std::max(dearest, o.cost);
    }
    if (dearest >= kMaxTotalCost - total) throw std::invalid_argument("solve_mck: summed costs reach 2^62");
    total += dearest;
  }
}

}  // namespace

void append_lower_hull(std::span<const int64_t> cost, std::span<const double> score, int32_t offset,
                       std::vector<int32_t>& out) {
  const size_t base = out.size();
  for (size_t p = 0; p < cost.size(); ++p) {
    // Drop the last point while the step into it saves no more per unit than the step out of it.
    while (out.size() - base >= 2) {
      const size_t a = size_t(out[out.size() - 2] - offset), b = size_t(out.back() - offset);
      if (step_efficiency(cost[a], score[a], cost[b], score[b]) > step_efficiency(cost[b], score[b], cost[p], score[p])) break;
      out.pop_back();
    }
    out.push_back(offset + int32_t(p));
  }
}

mck_prepared prepare_mck(std::span<const mck_group> groups) {
  validate(groups);
  mck_prepared p;
  const size_t n = groups.size();
  p.first.reserve(n + 1);
  p.hull_first.reserve(n + 1);
  p.first.push_back(0);
  p.hull_first.push_back(0);
  std::vector<int32_t> order;
  for (size_t g = 0; g < n; ++g) {
    const auto& opts = groups[g].options;
    order.resize(opts.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      if (opts[a].cost != opts[b].cost) return opts[a].cost < opts[b].cost;
      if (opts[a].score != opts[b].score) return opts[a].score < opts[b].score;
      return a < b;
    });
    const auto begin = int32_t(p.cost.size());
    for (int32_t j : order) {
      if (int32_t(p.cost.size()) > begin && !(opts[j].score < p.score.back())) continue;  // dominated
      p.cost.push_back(opts[j].cost);
      p.score.push_back(opts[j].score);
      p.index.push_back(j);
    }
    p.first.push_back(int32_t(p.cost.size()));
    const auto len = size_t(p.first.back() - begin);
    append_lower_hull(std::span(p.cost).subspan(size_t(begin), len), std::span(p.score).subspan(size_t(begin), len),
                      begin, p.hull);
    p.hull_first.push_back(int32_t(p.hull.size()));
    p.cheapest_cost += p.cost[size_t(begin)];
    p.cheapest_score += p.score[size_t(begin)];
    p.max_score = std::max(p.max_score, p.score[size_t(begin)]);
  }

  p.steps.reserve(p.hull.size() - n);
  for (size_t g = 0; g < n; ++g)
    for (int32_t h = p.hull_first[g]; h + 1 < p.hull_first[g + 1]; ++h) {
      const auto a = size_t(p.hull[size_t(h)]), b = size_t(p.hull[size_t(h) + 1]);
      p.steps.push_back({step_efficiency(p.cost[a], p.score[a], p.cost[b], p.score[b]), p.cost[b] - p.cost[a],
                         p.score[a] - p.score[b], int32_t(g), h - p.hull_first[g]});
    }
  std::sort(p.steps.begin(), p.steps.end(), [](const hull_step& a, const hull_step& b) {
    if (a.efficiency != b.efficiency) return a.efficiency > b.efficiency;
    if (a.group != b.group) return a.group < b.group;
    return a.step < b.step;
  });
  p.step_cost_prefix.resize(p.steps.size() + 1);
  p.step_cost_prefix[0] = 0;
  for (size_t i = 0; i < p.steps.size(); ++i) p.step_cost_prefix[i + 1] = p.step_cost_prefix[i] + p.steps[i].cost;
  return p;
}

}  // namespace mixq::detail
