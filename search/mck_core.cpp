#include "search/mck_core.hpp"

#include <algorithm>
#include <bit>
#include <limits>
#include <optional>

#include "search/mck_prepare.hpp"

namespace mixq::detail {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Hull steps in efficiency order as a Fenwick tree of (cost, saving), so that zeroing a group's
// steps and finding the longest prefix that fits a capacity both take O(log n).
class step_tree {
 public:
  step_tree(std::vector<int64_t> cost, std::vector<double> saving)
      : leaf_cost_(std::move(cost)), leaf_saving_(std::move(saving)) {
    const size_t n = leaf_cost_.size();
    cost_.assign(n + 1, 0);
    saving_.assign(n + 1, 0);
    for (size_t i = 1; i <= n; ++i) {
      cost_[i] += leaf_cost_[i - 1];
      saving_[i] += leaf_saving_[i - 1];
      const size_t parent = i + (i & (~i + 1));
      if (parent <= n) {
        cost_[parent] += cost_[i];
        saving_[parent] += saving_[i];
      }
    }
    top_ = n ? std::bit_floor(n) : 0;
  }

  void remove(size_t slot) {
    const int64_t c = leaf_cost_[slot];
    const double s = leaf_saving_[slot];
    for (size_t i = slot + 1; i < cost_.size(); i += i & (~i + 1)) {
      cost_[i] -= c;
      saving_[i] -= s;
    }
  }

  struct prefix {
    size_t length;
    int64_t cost;
    double saving;
  };
  // The longest prefix costing at most cap (>= 0). Removed steps cost 0, so the step right after
  // the prefix, if any, is a live one that does not fit.
  prefix fit(int64_t cap) const {
    prefix p{0, 0, 0.0};
    for (size_t step = top_; step; step >>= 1) {
      const size_t next = p.length + step;
      if (next < cost_.size() && p.cost + cost_[next] <= cap) {
        p.length = next;
        p.cost += cost_[next];
        p.saving += saving_[next];
      }
    }
    return p;
  }

 private:
  std::vector<int64_t> leaf_cost_;
  std::vector<double> leaf_saving_;
  std::vector<int64_t> cost_;
  std::vector<double> saving_;
  size_t top_ = 0;
};

// The LP relaxation of the groups still to be decided (a suffix of the order), as a function of
// the capacity left for them.
class suffix_lp {
 public:
  explicit suffix_lp(std::span<const core_group> groups) : groups_(groups) {
    const size_t n = groups.size();
    cheapest_cost_.assign(n + 1, 0);
    cheapest_score_.assign(n + 1, 0);
    for (size_t g = n; g-- > 0;) {
      cheapest_cost_[g] = cheapest_cost_[g + 1] + groups[g].dcost.front();
      cheapest_score_[g] = cheapest_score_[g + 1] + groups[g].dscore.front();
    }
    std::vector<hull_step> steps;
    std::vector<int32_t> hull;
    for (size_t g = 0; g < n; ++g) {
      const auto& grp = groups[g];
      hull.clear();
      append_lower_hull(grp.dcost, grp.dscore, 0, hull);
      for (size_t h = 0; h + 1 < hull.size(); ++h) {
        const auto a = size_t(hull[h]), b = size_t(hull[h + 1]);
        steps.push_back({step_efficiency(grp.dcost[a], grp.dscore[a], grp.dcost[b], grp.dscore[b]),
                         grp.dcost[b] - grp.dcost[a], grp.dscore[a] - grp.dscore[b], int32_t(g), int32_t(h)});
      }
    }
    std::sort(steps.begin(), steps.end(), [](const hull_step& a, const hull_step& b) {
      if (a.efficiency != b.efficiency) return a.efficiency > b.efficiency;
      if (a.group != b.group) return a.group < b.group;
      return a.step < b.step;
    });
    std::vector<int64_t> cost(steps.size());
    std::vector<double> saving(steps.size());
    efficiency_.resize(steps.size());
    slots_first_.assign(n + 1, 0);
    for (const auto& s : steps) ++slots_first_[size_t(s.group) + 1];
    for (size_t g = 0; g < n; ++g) slots_first_[g + 1] += slots_first_[g];
    slots_.resize(steps.size());
    std::vector<size_t> fill(slots_first_.begin(), slots_first_.end() - 1);
    for (size_t i = 0; i < steps.size(); ++i) {
      cost[i] = steps[i].cost;
      saving[i] = steps[i].saving;
      efficiency_[i] = steps[i].efficiency;
      slots_[fill[size_t(steps[i].group)]++] = i;
    }
    tree_.emplace(std::move(cost), std::move(saving));
  }

  // The groups from `decided_` on are the suffix; this moves its first group out of it.
  void decide_next() {
    for (size_t i = slots_first_[decided_]; i < slots_first_[decided_ + 1]; ++i) tree_->remove(slots_[i]);
    ++decided_;
  }

  int64_t cheapest_cost() const { return cheapest_cost_[decided_]; }

  // The LP optimum of the suffix with `cap` cost to spend; infinity when even its cheapest
  // options do not fit.
  double bound(int64_t cap) const {
    const int64_t room = cap - cheapest_cost_[decided_];
    if (room < 0) return kInf;
    const auto p = tree_->fit(room);
    double v = cheapest_score_[decided_] - p.saving;
    if (p.length < efficiency_.size()) v -= double(room - p.cost) * efficiency_[p.length];
    return v;
  }

 private:
  std::span<const core_group> groups_;
  std::vector<int64_t> cheapest_cost_;
  std::vector<double> cheapest_score_;
  std::vector<double> efficiency_;
  std::vector<size_t> slots_first_;
  std::vector<size_t> slots_;
  std::optional<step_tree> tree_;
  size_t decided_ = 0;
};

struct state {
  int64_t d;   // summed dcost of the decided groups
  double s;    // summed dscore
  int32_t id;  // its entry in the trace
};

struct candidate {
  int64_t d;
  double s;
  int32_t parent;  // the trace entry it extends, -1 for the empty assignment
  int32_t option;
};

struct trace_entry {
  int32_t parent;
  int32_t option;
};

bool by_cost_then_score(const candidate& a, const candidate& b) { return a.d != b.d ? a.d < b.d : a.s < b.s; }

}  // namespace

core_result solve_core(std::span<const core_group> groups, int64_t slack, double incumbent, double cutoff,
                       double tol, int64_t max_states) {
  core_result res;
  res.best = incumbent;
  suffix_lp lp(groups);
  std::vector<trace_entry> trace;
  int32_t best_id = -1;
  size_t best_stage = 0;
  std::vector<state> cur{{0, 0.0, -1}};
  std::vector<candidate> merged, shifted, buffer;

  for (size_t t = 0; t < groups.size(); ++t) {
    const auto& g = groups[t];
    if (int64_t(trace.size() + cur.size() * g.dcost.size()) > max_states) {
      double lb = std::min(res.best, cutoff);
      for (const auto& st : cur) lb = std::min(lb, st.s + lp.bound(slack - st.d));
      res.lower_bound = lb;
      res.states = int64_t(trace.size());
      break;
    }
    lp.decide_next();

    // Every state extended by every option: each copy stays sorted by cost, so merge them.
    merged.clear();
    for (size_t k = 0; k < g.dcost.size(); ++k) {
      shifted.clear();
      for (const auto& st : cur) shifted.push_back({st.d + g.dcost[k], st.s + g.dscore[k], st.id, int32_t(k)});
      buffer.resize(merged.size() + shifted.size());
      std::merge(merged.begin(), merged.end(), shifted.begin(), shifted.end(), buffer.begin(), by_cost_then_score);
      merged.swap(buffer);
    }

    std::vector<state> next;
    const int64_t max_d = slack - lp.cheapest_cost();
    double lowest = kInf;
    for (const auto& c : merged) {
      if (c.d > max_d) break;            // no completion fits, nor for any dearer state
      if (!(c.s < lowest)) continue;     // dominated: a cheaper state scores no more
      lowest = c.s;
      const bool improves = c.d <= slack && c.s < res.best;  // completed by the reference options
      if (improves) res.best = c.s;
      const bool open = c.s + lp.bound(slack - c.d) < std::min(res.best, cutoff) - tol;
      if (!improves && !open) continue;
      const auto id = int32_t(trace.size());
      trace.push_back({c.parent, c.option});
      if (improves) {
        best_id = id;
        best_stage = t;
      }
      if (open) next.push_back({c.d, c.s, id});
    }
    cur.swap(next);
    if (t + 1 == groups.size() || cur.empty()) {
      res.complete = true;
      res.lower_bound = std::min(res.best, cutoff);
      res.states = int64_t(trace.size());
      break;
    }
  }
  if (groups.empty()) {
    res.complete = true;
    res.lower_bound = std::min(res.best, cutoff);
  }

  if (best_id >= 0) {
    res.improved = true;
    res.pick.assign(groups.size(), -1);
    for (int32_t id = best_id; id >= 0; id = trace[size_t(id)].parent) res.pick[best_stage--] = trace[size_t(id)].option;
  }
  return res;
}

}  // namespace mixq::detail
