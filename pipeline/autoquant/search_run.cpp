#include "pipeline/autoquant/search_run.hpp"

#include <chrono>
#include <cmath>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calib/search_scores.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error
#include "search/mck_solver.hpp"

namespace mixq {
namespace fs = std::filesystem;

namespace {

std::vector<mck_group> knapsack_of(const model_spec& spec, const search_settings& st, const search_space& space,
                                   const sensitivity_scores& scores) {
  std::vector<mck_group> groups(space.groups.size());
  for (size_t g = 0; g < space.groups.size(); ++g) {
    const search_group& G = space.groups[g];
    const size_t options = G.disabled ? 1 : G.candidates.size();  // disabled: bf16 only
    for (size_t c = 0; c < options; ++c)
      groups[g].options.push_back({scores.score[g][c], group_cost(space, spec, st, G, G.candidates[c])});
  }
  return groups;
}

// Everything the scores depend on (not the budget, nor the cost model: both only steer the solver).
std::string score_fingerprint(const stats_fingerprint& fp, const search_settings& st) {
  std::string s = fmt::format("{}|{}|{}|{}|{}", fp.model, fp.calibration, fp.data, to_string(st.method),
                              st.score_samples);
  for (const auto& c : st.candidates) s.append("|").append(describe(c));
  for (const auto& [glob, line] : st.disable) s.append("|").append(glob);
  return fnv1a_hex(s.data(), s.size());
}

search_scores_table scores_table(const search_outcome& out, const search_settings& st, const std::string& fingerprint) {
  search_scores_table t;
  t.method = std::string(to_string(st.method));
  t.fingerprint = fingerprint;
  t.budget_bits = out.budget_bits;
  t.effective_bits = out.achieved_bits;
  t.format_bits["bf16"] = 16.0;
  for (const weight_quant_spec& c : st.candidates) t.format_bits[std::string(traits_of(c.format).name)] = traits_of(c.format).effective_bits;
  for (size_t g = 0; g < out.space.groups.size(); ++g) {
    const search_group& G = out.space.groups[g];
    t.weights[G.name] = G.weights;
    for (size_t c = 0; c < G.candidates.size(); ++c)
      t.scores[std::string(traits_of(G.candidates[c].format).name)][G.name] = out.scores.score[g][c];
    t.chosen[G.name] = std::string(traits_of(G.candidates[size_t(out.choice[g])].format).name);
  }
  return t;
}

}  // namespace

quant_plan plan_of_choice(const model_spec& spec, const search_space& space, std::span<const int> choice) {
  quant_plan plan;
  plan.linears.resize(spec.linears.size());
  for (size_t g = 0; g < space.groups.size(); ++g)
    for (int i : space.groups[g].linears)
      plan.linears[size_t(i)].weight = space.groups[g].candidates[size_t(choice[g])];
  return plan;
}

void record_measured_front(const fs::path& record_file, std::span<const std::pair<double, double>> points,
                           double reference_ppl) {
  std::ifstream in(record_file);
  nlohmann::ordered_json rec = nlohmann::ordered_json::parse(in);
  nlohmann::ordered_json measured = nlohmann::ordered_json::array();
  for (const auto& [bits, ppl] : points)
    measured.push_back({{"bits", bits}, {"ppl", ppl}, {"searched", true}, {"label", "searched"}});
  rec["measured"] = measured;
  rec["reference_ppl"] = reference_ppl;
  const fs::path tmp = record_file.string() + ".tmp";
  std::ofstream(tmp) << rec.dump(1) << "\n";
  fs::rename(tmp, record_file);
}

front_entry solve_budget(const model_spec& spec, const search_settings& st, const search_space& space,
                         const sensitivity_scores& scores, double bits) {
  const std::vector<mck_group> groups = knapsack_of(spec, st, space, scores);
  const int64_t per_bit = cost_per_bit(space, spec, st);
  const mck_solution s = solve_mck(groups, int64_t(std::floor(bits * double(per_bit))));
  front_entry e;
  e.bits = bits;
  e.feasible = s.feasible;
  e.achieved_bits = double(s.cost) / double(per_bit);
  e.score = s.score;
  e.choice = s.choice;
  return e;
}

search_outcome run_search(causal_lm& model, const recipe& r, const calibration_stats& stats,
                          std::span<const std::vector<int32_t>> sequences, const fs::path& run_dir, bool resume,
                          const progress_callback& progress, const run_world& world) {
  const model_spec& spec = model.spec();
  const search_settings& st = r.search;
  search_outcome out;
  out.space = make_search_space(spec, st);
  const std::string fingerprint = score_fingerprint(stats.fingerprint, st);
  const fs::path record_file = run_dir / "search.json";

  // scores: measured, or reused from a previous run with the same fingerprint
  const auto t0 = std::chrono::steady_clock::now();
  const bool reuse = resume && world.roots(fs::exists(record_file));
  nlohmann::ordered_json measured_before = nlohmann::ordered_json::array(), reference_before;
  world.stage([&] {
    if (!reuse) return;
    std::ifstream in(record_file);
    const nlohmann::json rec = nlohmann::json::parse(in, nullptr, false);
    // Measured (bits, perplexity) points belong to the scores and the cost model: a re-solve keeps them.
    if (rec.is_object() && rec.value("cost", std::string("weight")) == to_string(st.cost) && rec.contains("measured") &&
        rec.contains("reference_ppl"))
      measured_before = rec["measured"], reference_before = rec["reference_ppl"];
    if (rec.is_discarded() || !rec.contains("score_fingerprint"))
      throw io_error(fmt::format("{}: not a search record mixq can resume from", record_file.string()));
    if (rec["score_fingerprint"] != fingerprint)
      throw io_error(fmt::format("{}: the stored scores were measured with a different model, calibration, method, "
                                 "candidates or disabled layers; rerun without --resume or point --run-dir elsewhere",
                                 record_file.string()));
    const nlohmann::json& groups = rec.at("groups");
    if (groups.size() != out.space.groups.size())
      throw io_error(fmt::format("{}: {} groups stored, the model has {}", record_file.string(), groups.size(),
                                 out.space.groups.size()));
    out.scores.score.resize(groups.size());
    for (size_t g = 0; g < groups.size(); ++g)
      for (const weight_quant_spec& c : out.space.groups[g].candidates)
        out.scores.score[g].push_back(groups[g].at("scores").value(std::string(traits_of(c.format).name), 0.0));
    out.scores.sequences = rec.value("score_samples", int64_t(0));
    out.scores.tokens = rec.value("score_tokens", int64_t(0));
    out.scores_reused = true;
  });
  if (!out.scores_reused) {
    const size_t n = std::min(sequences.size(), size_t(st.score_samples));
    out.scores = score_groups(model, out.space, stats, sequences.first(n), st.method, progress, world);
  }
  const auto t1 = std::chrono::steady_clock::now();
  out.score_seconds = std::chrono::duration<double>(t1 - t0).count();

  // solve: the asked budget, then the report budgets
  const std::vector<mck_group> groups = knapsack_of(spec, st, out.space, out.scores);
  const int64_t per_bit = cost_per_bit(out.space, spec, st);
  int64_t lo = 0, hi = 0;
  for (const mck_group& g : groups) {
    int64_t cmin = g.options[0].cost, cmax = g.options[0].cost;
    for (const mck_option& o : g.options) cmin = std::min(cmin, o.cost), cmax = std::max(cmax, o.cost);
    lo += cmin;
    hi += cmax;
  }
  out.min_bits = double(lo) / double(per_bit);
  out.max_bits = double(hi) / double(per_bit);
  out.budget_bits = st.effective_bits;
  std::vector<double> budgets{st.effective_bits};
  for (double b : {4.5, 4.8, 5.0, 5.4, 6.0, 8.0})
    if (b != st.effective_bits) budgets.push_back(b);
  const size_t report_budgets = budgets.size();
  constexpr int kFrontPoints = 32;  // the exact front, evenly spaced over the reachable range
  for (int k = 0; k <= kFrontPoints; ++k)
    budgets.push_back(out.min_bits + (out.max_bits - out.min_bits) * double(k) / kFrontPoints);
  std::vector<int64_t> costs;
  for (double b : budgets) costs.push_back(int64_t(std::floor(b * double(per_bit))));
  const std::vector<mck_solution> sols = solve_mck_budgets(groups, costs);
  out.solve_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  const mck_solution& asked = sols[0];
  world.stage([&] {  // (every process solves the same problem: they fail alike, and are told once)
    if (asked.feasible) return;
    require_reachable_budget(out.space, spec, st, r.origin);
    throw std::logic_error(fmt::format("{}: the solver found no assignment within {} effective bits", r.origin,
                                       st.effective_bits));
  });
  out.choice = asked.choice;
  out.achieved_bits = double(asked.cost) / double(per_bit);
  out.proven_optimal = asked.proven_optimal;
  std::vector<front_entry> dense;
  for (size_t k = 0; k < budgets.size(); ++k) {
    front_entry e;
    e.bits = budgets[k];
    e.feasible = sols[k].feasible;
    e.achieved_bits = double(sols[k].cost) / double(per_bit);
    e.score = sols[k].score;
    e.choice = sols[k].choice;
    (k < report_budgets ? out.front : dense).push_back(std::move(e));
  }
  dense.insert(dense.end(), out.front.begin(), out.front.end());
  std::sort(dense.begin(), dense.end(), [](const front_entry& a, const front_entry& b) { return a.bits < b.bits; });
  std::sort(out.front.begin(), out.front.end(), [](const front_entry& a, const front_entry& b) { return a.bits < b.bits; });
  out.plan = plan_of_choice(spec, out.space, out.choice);

  // the record (also what `mixq report` draws)
  nlohmann::ordered_json rec;
  rec["model"] = std::filesystem::path(spec.origin).parent_path().string();  // (the directory of its config.json)
  rec["model_fingerprint"] = stats.fingerprint.model;
  rec["architecture"] = spec.architecture;
  rec["method"] = std::string(to_string(st.method));
  nlohmann::ordered_json formats = nlohmann::ordered_json::array(), bits = nlohmann::ordered_json::object();
  for (const auto& c : st.candidates) {
    formats.push_back(std::string(traits_of(c.format).name));
    bits[std::string(traits_of(c.format).name)] = traits_of(c.format).effective_bits;
  }
  formats.push_back("bf16");
  bits["bf16"] = 16.0;
  rec["formats"] = formats;
  rec["format_bits"] = bits;
  rec["cost"] = std::string(to_string(st.cost));  // what budget_bits and effective_bits count
  rec["budget_bits"] = out.budget_bits;
  rec["effective_bits"] = out.achieved_bits;
  rec["min_bits"] = out.min_bits;
  rec["proven_optimal"] = out.proven_optimal;
  rec["score_samples"] = out.scores.sequences;
  rec["score_tokens"] = out.scores.tokens;
  rec["seconds"] = {{"score", out.score_seconds}, {"solve", out.solve_seconds}};
  rec["score_fingerprint"] = fingerprint;
  nlohmann::ordered_json gs = nlohmann::ordered_json::array();
  for (size_t g = 0; g < out.space.groups.size(); ++g) {
    const search_group& G = out.space.groups[g];
    nlohmann::ordered_json j;
    j["name"] = G.name;
    j["kind"] = G.kind;
    j["layer"] = G.layer;
    nlohmann::ordered_json mods = nlohmann::ordered_json::array();
    for (int i : G.linears) mods.push_back(spec.linears[size_t(i)].module);
    j["modules"] = mods;
    j["weights"] = G.weights;
    nlohmann::ordered_json sc = nlohmann::ordered_json::object();
    for (size_t c = 0; c < G.candidates.size(); ++c)
      sc[std::string(traits_of(G.candidates[c].format).name)] = out.scores.score[g][c];
    j["scores"] = sc;
    j["unavailable"] = G.unavailable;
    j["chosen"] = std::string(traits_of(G.candidates[size_t(out.choice[g])].format).name);
    j["disabled"] = G.disabled;
    j["disabled_reason"] = G.disabled_reason;
    gs.push_back(std::move(j));
  }
  rec["groups"] = gs;
  nlohmann::ordered_json front = nlohmann::ordered_json::array();
  for (size_t k = 0; k < dense.size(); ++k) {
    const front_entry& e = dense[k];
    const bool again = k > 0 && dense[k - 1].feasible && dense[k - 1].choice == e.choice;  // (budgets with one optimum)
    if (e.feasible && !again) front.push_back({{"bits", e.achieved_bits}, {"score", e.score}, {"budget", e.bits}});
  }
  rec["front"] = front;
  rec["expert_tokens"] = stats.expert_tokens;
  nlohmann::ordered_json excluded = nlohmann::ordered_json::array();
  for (const search_group& G : out.space.groups) {
    if (G.disabled)
      for (int i : G.linears) excluded.push_back({{"module", spec.linears[size_t(i)].module}, {"reason", G.disabled_reason}});
  }
  rec["excluded"] = excluded;
  rec["measured"] = measured_before;  // (root: the earlier run's when the scores were reused; --measure-front adds)
  if (!reference_before.is_null()) rec["reference_ppl"] = reference_before;
  world.stage([&] {  // (the root writes the run's records)
    if (!world.root()) return;
    fs::create_directories(run_dir);
    write_search_scores(run_dir / "search.h5", scores_table(out, st, fingerprint));
    const fs::path tmp = record_file.string() + ".tmp";
    std::ofstream(tmp) << rec.dump(1) << "\n";
    fs::rename(tmp, record_file);
  });
  return out;
}

}  // namespace mixq
