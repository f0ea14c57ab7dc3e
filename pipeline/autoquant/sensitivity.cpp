#include "pipeline/autoquant/sensitivity.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_map>

#include <Eigen/Core>
#include <fmt/format.h>

#include "formats/activation_quant.hpp"
#include "kernels/cpu/quantize.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error
#include "pipeline/quantize/quantize_weights.hpp"

namespace mixq {
namespace {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_map = Eigen::Map<const row_matrix>;

// A linear as the export will compute it in one candidate format: dequantized weights and the
// activation rounding (format + input scale).
struct quantized_view {
  std::vector<float> w;
  input_quant act;
};

class model_linears {
 public:
  explicit model_linears(causal_lm& model) {
    model.for_each_linear([&](llama_linear& W) { by_name_[W.name] = &W; });
  }
  llama_linear& at(const std::string& name) const {
    const auto it = by_name_.find(name);
    if (it == by_name_.end()) throw io_error(fmt::format("linear '{}' is not part of the model's forward pass", name));
    return *it->second;
  }
  bool has(const std::string& name) const { return by_name_.count(name) != 0; }

 private:
  std::unordered_map<std::string, llama_linear*> by_name_;
};

// Each linear of each group in each candidate, quantized once with the shared amax of its fused siblings.
class quantized_cache {
 public:
  quantized_cache(const model_linears& linears, const model_spec& spec, const calibration_stats& stats)
      : linears_(linears), x_amax_(input_amax_by_linear(spec, stats)) {
    for (const linear_spec& l : spec.linears) {
      if (!linears.has(l.module)) continue;
      const llama_linear& W = linears.at(l.module);
      float a = 0.0f;
      for (float v : W.w) a = std::fmax(a, std::fabs(v));
      float& g = w_amax_[scale_sharing_key(l.module)];
      g = std::fmax(g, a);
    }
  }

  quantized_view make(const linear_spec& l, const weight_quant_spec& c) const {
    const llama_linear& W = linears_.at(l.module);
    const cpu::source_matrix src{W.w.data(), cpu::source_dtype::f32, W.out, W.in, l.module};
    const float w_amax = w_amax_.at(scale_sharing_key(l.module)), x_amax = x_amax_.at(l.module);
    quantized_view q;
    q.w.resize(W.w.size());
    if (c.format == format_id::fp8_per_tensor) {
      fp8_options o = fp8_options_for(c);
      o.amax = w_amax;
      cpu::fp8_dequantize(cpu::fp8_quantize(src, o), q.w);
      q.act = {format_id::fp8_per_tensor, fp8_input_scale(x_amax)};
    } else if (c.format == format_id::nvfp4 || c.format == format_id::nvfp4_w4a16) {
      nvfp4_options o = nvfp4_options_for(c);
      o.global_amax = w_amax;
      cpu::nvfp4_dequantize(cpu::nvfp4_quantize(src, o), q.w);
      if (c.format == format_id::nvfp4) q.act = {format_id::nvfp4, nvfp4_input_scale(x_amax)};
    } else {
      cpu::fake_quant_weight(src, c, q.w);  // weight-only formats (MX, NF4) are measured as such
    }
    return q;
  }

 private:
  const model_linears& linears_;
  std::map<std::string, float> x_amax_, w_amax_;
};

std::vector<float> quantize_input(const std::vector<float>& x, int64_t in, const input_quant& act) {
  std::vector<float> xq(x.size());
  if (act.format == format_id::nvfp4) nvfp4_fake_quant_activations(x, in, act.input_scale, xq);
  else fp8_fake_quant_activations(x, act.input_scale, xq);
  return xq;
}

// sum over rows and features of (g * (Xq Wq^T - X W^T))^2; g empty: weight 1 (hessian).
double replay_score(const std::vector<float>& x, const std::vector<float>& g, const llama_linear& W,
                    const quantized_view& q) {
  const int64_t T = int64_t(x.size()) / W.in;
  if (T == 0) return 0.0;
  const_map X(x.data(), T, W.in), Wm(W.w.data(), W.out, W.in), Wq(q.w.data(), W.out, W.in);
  row_matrix dy;
  if (q.act.format != format_id::bf16) {
    const std::vector<float> xq = quantize_input(x, W.in, q.act);
    dy = const_map(xq.data(), T, W.in) * Wq.transpose();
  } else {
    dy = X * Wq.transpose();
  }
  dy.noalias() -= X * Wm.transpose();
  double s = 0.0;
  const float* d = dy.data();
  for (int64_t i = 0; i < T * W.out; ++i) {
    const double v = g.empty() ? double(d[i]) : double(g[size_t(i)]) * double(d[i]);
    s += v * v;
  }
  return s;
}

double kl_mean(const std::vector<float>& p_logits, const std::vector<float>& q_logits, int64_t V) {
  const int64_t T = int64_t(p_logits.size()) / V;
  double total = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    const float* a = p_logits.data() + t * V;
    const float* b = q_logits.data() + t * V;
    const double ma = *std::max_element(a, a + V), mb = *std::max_element(b, b + V);
    double za = 0.0, zb = 0.0;
    for (int64_t v = 0; v < V; ++v) za += std::exp(double(a[v]) - ma), zb += std::exp(double(b[v]) - mb);
    const double la = std::log(za) + ma, lb = std::log(zb) + mb;
    double kl = 0.0;
    for (int64_t v = 0; v < V; ++v) {
      const double lp = double(a[v]) - la, lq = double(b[v]) - lb;
      kl += std::exp(lp) * (lp - lq);
    }
    total += std::max(kl, 0.0);
  }
  return T > 0 ? total / double(T) : 0.0;
}

}  // namespace

void make_monotone_in_bits(const search_group& g, std::vector<double>& scores) {
  std::vector<size_t> order(g.candidates.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return traits_of(g.candidates[a].format).effective_bits < traits_of(g.candidates[b].format).effective_bits;
  });
  for (size_t k = 1; k < order.size(); ++k) scores[order[k]] = std::min(scores[order[k]], scores[order[k - 1]]);
  scores[0] = 0.0;  // bf16
}

sensitivity_scores score_groups(causal_lm& model, const search_space& space, const calibration_stats& stats,
                                std::span<const std::vector<int32_t>> sequences, score_method method,
                                const progress_callback& progress) {
  const model_spec& spec = model.spec();
  sensitivity_scores out;
  out.score.resize(space.groups.size());
  for (size_t g = 0; g < space.groups.size(); ++g) out.score[g].assign(space.groups[g].candidates.size(), 0.0);
  const model_linears linears(model);
  const quantized_cache cache(linears, spec, stats);

  // The groups and candidates that need a score, each quantized once.
  std::vector<std::vector<std::vector<quantized_view>>> views(space.groups.size());  // [g][c][linear in g]
  for (size_t g = 0; g < space.groups.size(); ++g) {
    const search_group& G = space.groups[g];
    if (G.disabled) continue;
    views[g].resize(G.candidates.size());
    for (size_t c = 1; c < G.candidates.size(); ++c)
      for (int i : G.linears)
        if (linears.has(spec.linears[size_t(i)].module))  // MTP linears are not in the forward pass: score 0
          views[g][c].push_back(cache.make(spec.linears[size_t(i)], G.candidates[c]));
  }
  const int64_t n = int64_t(sequences.size());
  int64_t done = 0;
  const int64_t total = method == score_method::kl ? n * int64_t(space.groups.size()) : n;

  if (method == score_method::kl) {
    const int64_t V = model.vocab();
    std::vector<std::vector<float>> base(static_cast<size_t>(n));
    for (int64_t s = 0; s < n; ++s) base[size_t(s)] = model.forward(sequences[size_t(s)]);
    for (size_t g = 0; g < space.groups.size(); ++g) {
      const search_group& G = space.groups[g];
      for (size_t c = 1; c < G.candidates.size() && !G.disabled; ++c) {
        std::vector<std::pair<llama_linear*, quantized_view>> saved;  // swap the group in, restore after
        size_t k = 0;
        for (int i : G.linears) {
          const std::string& name = spec.linears[size_t(i)].module;
          if (!linears.has(name)) continue;
          llama_linear& W = linears.at(name);
          quantized_view q = views[g][c][k++];
          std::swap(W.w, q.w);
          std::swap(W.act, q.act);
          saved.emplace_back(&W, std::move(q));
        }
        double kl = 0.0;
#pragma omp parallel for reduction(+ : kl) schedule(dynamic, 1)
        for (int64_t s = 0; s < n; ++s) kl += kl_mean(base[size_t(s)], model.forward(sequences[size_t(s)]), V);
        out.score[g][c] = kl / double(std::max<int64_t>(n, 1));
        for (auto& [W, q] : saved) std::swap(W->w, q.w), std::swap(W->act, q.act);
      }
      done += n;
      if (progress) progress(done, total);
    }
  } else {
    // One (forward or forward + backward) pass per sequence records every linear's input (rows in
    // the order the hook sees them, so a routed expert's rows line up with its dY), then the replays.
    const std::vector<float> no_gradient;  // hessian: every output weighs 1
    for (int64_t s = 0; s < n; ++s) {
      std::unordered_map<std::string, std::vector<float>> inputs;
      forward_hooks hooks;
      hooks.input = [&](const std::string& name, const float* x, int64_t T, int64_t in) {
        std::vector<float>& v = inputs[name];
        v.insert(v.end(), x, x + T * in);
      };
      llama_grads grads;
      if (method == score_method::fisher) grads = model.forward_backward(sequences[size_t(s)], hooks);
      else model.forward(sequences[size_t(s)], hooks);
#pragma omp parallel for schedule(dynamic, 1)
      for (size_t g = 0; g < space.groups.size(); ++g) {
        const search_group& G = space.groups[g];
        if (G.disabled) continue;
        for (size_t c = 1; c < G.candidates.size(); ++c) {
          size_t k = 0;
          double sum = 0.0;
          for (int i : G.linears) {
            const std::string& name = spec.linears[size_t(i)].module;
            if (!linears.has(name)) continue;
            const quantized_view& q = views[g][c][k++];
            const auto x = inputs.find(name);
            if (x == inputs.end()) continue;  // a routed expert no token reached
            const std::vector<float>& dy = method == score_method::fisher ? grads.dy.at(name) : no_gradient;
            sum += replay_score(x->second, dy, linears.at(name), q);
          }
          out.score[g][c] += sum;
        }
      }
      if (progress) progress(++done, total);
    }
  }
  for (const auto& s : sequences) out.tokens += int64_t(s.size());
  out.sequences = n;
  for (size_t g = 0; g < space.groups.size(); ++g)
    if (!space.groups[g].disabled) make_monotone_in_bits(space.groups[g], out.score[g]);
  return out;
}

}  // namespace mixq
