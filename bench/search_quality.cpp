// The quality bar of the mixed-precision search, measured: at each budget, the perplexity of the
// searched assignment against (a) every uniform assignment that fits the same budget and (b) the
// median of 20 random feasible assignments filled up to the same budget; plus how well the scores
// predict the measured loss increase of each group quantized alone (Spearman rank correlation).
// Everything runs in one process on one set of scores; the perplexities are of the fake-quantized
// model, which mixq quantize's verification shows equal to the re-loaded export.
//
//   build/bench/search_quality --model ../shared/models/stories260K --recipe auto_nvfp4_fp8_5p4bits \
//       --eval ../shared/data/tinystories/TinyStories-valid-reduced.tok512.u16.bin --ctx 512
// Writes a Markdown table to stdout; with --record RUN_DIR/search.json adds the measured points
// (what `mixq report` draws) to that file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "calib/builtin_calibration.hpp"
#include "calib/text_tokenizer.hpp"
#include "pipeline/autoquant/search_run.hpp"
#include "pipeline/eval/perplexity.hpp"
#include "pipeline/io/checkpoint.hpp"
#include "pipeline/quantize/quantize_weights.hpp"

using namespace mixq;

namespace {

struct bench_context {
  std::filesystem::path model_dir;
  const checkpoint* ckpt;
  const model_spec* spec;
  const recipe* rcp;
  const calibration_stats* stats;
  const search_space* space;
  std::vector<int32_t> eval_tokens;
  int64_t ctx;
  int64_t per_bit;
};

double bits_of(const bench_context& b, const std::vector<int>& choice) {
  int64_t c = 0;
  for (size_t g = 0; g < b.space->groups.size(); ++g)
    c += group_cost(*b.space, *b.spec, b.rcp->search, b.space->groups[g], b.space->groups[g].candidates[size_t(choice[g])]);
  return double(c) / double(b.per_bit);
}

double perplexity_of(const bench_context& b, const std::vector<int>& choice) {
  const quant_plan plan = plan_of_choice(*b.spec, *b.space, choice);
  const quantized_weights q = quantize_weights(*b.ckpt, *b.spec, plan, kv_cache_format::none, *b.stats);
  auto model = load_causal_lm(b.model_dir);
  apply_fake_quant(*model, q);
  return evaluate_perplexity(*model, b.eval_tokens, b.ctx).ppl;
}

// Every group in candidate `format` where it can hold it, else its cheapest candidate (so
// format_id::count gives the all-cheapest assignment).
std::vector<int> uniform(const bench_context& b, format_id format) {
  std::vector<int> choice;
  for (const search_group& g : b.space->groups) {
    int pick = 0;
    double cheapest = 1e9;
    for (size_t c = 0; c < g.candidates.size(); ++c) {
      const double bits = traits_of(g.candidates[c].format).effective_bits;
      if (g.candidates[c].format == format) { pick = int(c); break; }
      if (bits < cheapest) cheapest = bits, pick = int(c);
    }
    choice.push_back(pick);
  }
  return choice;
}

// Start every group at its cheapest candidate, then upgrade random groups to random dearer
// candidates while the budget allows.
std::vector<int> random_fill(const bench_context& b, double budget, std::mt19937& rng) {
  std::vector<int> choice = uniform(b, format_id::count);
  std::vector<size_t> order(b.space->groups.size());
  std::iota(order.begin(), order.end(), size_t(0));
  for (int round = 0; round < 4; ++round) {
    std::shuffle(order.begin(), order.end(), rng);
    for (size_t g : order) {
      const search_group& G = b.space->groups[g];
      if (G.disabled) continue;
      const int c = int(std::uniform_int_distribution<size_t>(0, G.candidates.size() - 1)(rng));
      const int old = choice[g];
      choice[g] = c;
      if (bits_of(b, choice) > budget) choice[g] = old;
    }
  }
  return choice;
}

double spearman(std::vector<double> a, std::vector<double> b) {
  const auto ranks = [](const std::vector<double>& v) {
    std::vector<size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), size_t(0));
    std::sort(idx.begin(), idx.end(), [&](size_t x, size_t y) { return v[x] < v[y]; });
    std::vector<double> r(v.size());
    for (size_t i = 0; i < idx.size();) {  // average ranks over ties
      size_t j = i;
      while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
      for (size_t k = i; k <= j; ++k) r[idx[k]] = 0.5 * double(i + j);
      i = j + 1;
    }
    return r;
  };
  a = ranks(a), b = ranks(b);
  const double ma = std::accumulate(a.begin(), a.end(), 0.0) / double(a.size());
  const double mb = std::accumulate(b.begin(), b.end(), 0.0) / double(b.size());
  double sab = 0, saa = 0, sbb = 0;
  for (size_t i = 0; i < a.size(); ++i) sab += (a[i] - ma) * (b[i] - mb), saa += (a[i] - ma) * (a[i] - ma), sbb += (b[i] - mb) * (b[i] - mb);
  return sab / std::sqrt(saa * sbb);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Searched vs uniform vs random assignments, and score-vs-measured rank correlation"};
  std::string model_dir, recipe_name, eval_file, record;
  int64_t ctx = 512, randoms = 20;
  std::vector<double> budgets{4.5, 4.8, 5.0, 5.4, 6.0, 8.0};
  bool correlation = true;
  app.add_option("--model", model_dir)->required();
  app.add_option("--recipe", recipe_name)->required();
  app.add_option("--eval", eval_file)->required();
  app.add_option("--ctx", ctx);
  app.add_option("--budgets", budgets);
  app.add_option("--randoms", randoms);
  app.add_option("--record", record, "search.json to add the measured points to");
  app.add_flag("!--no-correlation", correlation, "skip the per-group measured loss increases");
  CLI11_PARSE(app, argc, argv);
  try {
    const recipe rcp = load_recipe(recipe_name);
    const checkpoint ckpt = checkpoint::open(model_dir);
    auto model = load_causal_lm(model_dir);
    const model_spec& spec = model->spec();
    const std::vector<int32_t> calib_tokens = rcp.calibration.data.empty()
                                                  ? builtin_calibration_tokens(model_dir, spec.dims.vocab)
                                                  : read_token_stream(rcp.calibration.data, model_dir, spec.dims.vocab);
    std::vector<std::vector<int32_t>> seqs;
    const int64_t L = std::min(rcp.calibration.seq_len, model->max_positions());
    for (size_t at = 0; int64_t(seqs.size()) < rcp.calibration.samples && at + size_t(L) <= calib_tokens.size(); at += size_t(L))
      seqs.emplace_back(calib_tokens.begin() + std::ptrdiff_t(at), calib_tokens.begin() + std::ptrdiff_t(at) + L);
    const calibration_stats stats = calibrate(*model, seqs);
    const search_space space = make_search_space(spec, rcp.search);
    const size_t n_score = std::min(seqs.size(), size_t(rcp.search.score_samples));
    const auto t0 = std::chrono::steady_clock::now();
    const sensitivity_scores scores =
        score_groups(*model, space, stats, std::span(seqs).first(n_score), rcp.search.method);
    const double score_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // the yardstick: the passes scoring cannot avoid (forward + backward for fisher, forward otherwise)
    const auto t1 = std::chrono::steady_clock::now();
    for (size_t i = 0; i < n_score; ++i) {
      if (rcp.search.method == score_method::fisher)
        model->forward_backward(seqs[i]);
      else
        model->forward(seqs[i]);
    }
    const double pass_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    bench_context b{model_dir, &ckpt, &spec, &rcp, &stats, &space,
                    read_token_stream(eval_file, model_dir, spec.dims.vocab), std::min(ctx, model->max_positions()),
                    cost_per_bit(space, spec, rcp.search)};
    const double reference = evaluate_perplexity(*model, b.eval_tokens, b.ctx).ppl;
    fmt::print("model {}  recipe {}  method {}  eval {} (ctx {})  unquantized ppl {:.6f}\n", model_dir, rcp.name,
               to_string(rcp.search.method), eval_file, b.ctx, reference);
    fmt::print("scoring: {} groups on {} sequences in {:.3f} s = {:.2f}x the bare {} passes ({:.3f} s)\n\n",
               space.groups.size(), n_score, score_seconds, score_seconds / pass_seconds,
               rcp.search.method == score_method::fisher ? "forward + backward" : "forward", pass_seconds);

    nlohmann::json measured = nlohmann::json::array();
    std::vector<std::pair<std::string, std::vector<int>>> uniforms;
    for (const weight_quant_spec& c : rcp.search.candidates) uniforms.emplace_back(std::string(traits_of(c.format).name), uniform(b, c.format));
    for (auto& [name, choice] : uniforms)
      measured.push_back({{"bits", bits_of(b, choice)}, {"ppl", perplexity_of(b, choice)}, {"searched", false}, {"label", "uniform " + name}});
    fmt::print("| budget | searched bits | searched ppl | uniform fitting the budget (ppl) | random median ppl (n={}) | beats both |\n", randoms);
    fmt::print("|---|---|---|---|---|---|\n");
    std::mt19937 rng(1234);
    for (double budget : budgets) {
      const front_entry e = solve_budget(spec, rcp.search, space, scores, budget);
      if (!e.feasible) {
        fmt::print("| {:.1f} | infeasible (this model reaches at least {:.3f} bits) | | | | |\n", budget,
                   bits_of(b, uniform(b, format_id::count)));
        continue;
      }
      const double ppl = perplexity_of(b, e.choice);
      measured.push_back({{"bits", e.achieved_bits}, {"ppl", ppl}, {"searched", true}, {"label", "searched"}});
      std::string uni;
      double best_uniform = INFINITY;
      for (const auto& m : measured)
        if (!m["searched"].get<bool>() && m["label"].get<std::string>().starts_with("uniform") && m["bits"].get<double>() <= budget + 1e-9) {
          uni += fmt::format("{} {:.4f} ({:.2f} b); ", m["label"].get<std::string>().substr(8), m["ppl"].get<double>(), m["bits"].get<double>());
          best_uniform = std::min(best_uniform, m["ppl"].get<double>());
        }
      std::vector<double> rp;
      for (int64_t k = 0; k < randoms; ++k) rp.push_back(perplexity_of(b, random_fill(b, budget, rng)));
      std::sort(rp.begin(), rp.end());
      const double median = rp.size() % 2 ? rp[rp.size() / 2] : 0.5 * (rp[rp.size() / 2 - 1] + rp[rp.size() / 2]);
      measured.push_back({{"bits", budget}, {"ppl", median}, {"searched", false}, {"label", fmt::format("random (median of {})", randoms)}});
      fmt::print("| {:.1f} | {:.3f} | {:.4f} | {} | {:.4f} | {} |\n", budget, e.achieved_bits, ppl, uni.empty() ? "none fits" : uni,
                 median, (ppl < best_uniform && ppl < median) ? "yes" : "NO");
    }
    if (correlation) {  // each group alone in its cheapest quantized candidate: score vs measured increase
      std::vector<double> predicted, actual;
      const std::vector<int> bf16(space.groups.size(), 0);
      for (size_t g = 0; g < space.groups.size(); ++g) {
        if (space.groups[g].disabled || space.groups[g].candidates.size() < 2) continue;
        size_t cheapest = 1;
        for (size_t c = 2; c < space.groups[g].candidates.size(); ++c)
          if (traits_of(space.groups[g].candidates[c].format).effective_bits < traits_of(space.groups[g].candidates[cheapest].format).effective_bits) cheapest = c;
        std::vector<int> one = bf16;
        one[g] = int(cheapest);
        predicted.push_back(scores.score[g][cheapest]);
        actual.push_back(std::log(perplexity_of(b, one)) - std::log(reference));
      }
      fmt::print("\nscore vs measured loss increase, each of {} groups quantized alone: Spearman {:.3f}\n", predicted.size(),
                 spearman(predicted, actual));
    }
    if (!record.empty()) {
      std::ifstream in(record);
      nlohmann::ordered_json rec = nlohmann::ordered_json::parse(in);
      rec["measured"] = measured;
      rec["reference_ppl"] = reference;
      std::ofstream(record) << rec.dump(1) << "\n";
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "search_quality: {}\n", e.what());
    return 1;
  }
  return 0;
}
