#include "pipeline/autoquant/sensitivity.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <map>
#include <unordered_map>

#include <Eigen/Core>
#include <fmt/format.h>

#include "formats/activation_quant.hpp"
#include "kernels/cpu/fake_quant_activations.hpp"
#include "kernels/cpu/quantize.hpp"
#include "pipeline/io/safetensors_file.hpp"  // io_error
#include "pipeline/model/layer_stream.hpp"
#include "pipeline/parallel/first_error.hpp"
#include "pipeline/quantize/quantize_weights.hpp"

namespace mixq {
namespace {

using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using const_map = Eigen::Map<const row_matrix>;

// A linear as the export will compute it in one candidate format: its weights as stored (NVFP4 and
// FP8 in 0.56 and 1 byte per weight, not the 4 of their dequantized copies: scoring holds every
// searched linear in every candidate), dequantized where a replay uses them, and the activation
// rounding (format + input scale).
struct quantized_view {
  format_id format = format_id::bf16;
  nvfp4_weight nvfp4;
  fp8_weight fp8;
  std::vector<float> dense;  // the formats scored as weight-only fake-quant (MX, NF4)
  input_quant act;

  void dequantize(std::vector<float>& out) const {
    if (format == format_id::fp8_per_tensor) {
      out.resize(size_t(fp8.rows * fp8.cols));
      cpu::fp8_dequantize(fp8, out);
    } else if (format == format_id::nvfp4 || format == format_id::nvfp4_w4a16) {
      out.resize(size_t(nvfp4.rows * nvfp4.cols));
      cpu::nvfp4_dequantize(nvfp4, out);
    } else {
      out = dense;
    }
  }
  // The dequantized weights: in the caller's buffer (one per scoring pass: freed with it), or the
  // weight-only formats' own.
  const std::vector<float>& weights(std::vector<float>& buffer) const {
    if (format != format_id::fp8_per_tensor && format != format_id::nvfp4 && format != format_id::nvfp4_w4a16)
      return dense;
    dequantize(buffer);
    return buffer;
  }
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

// Each linear of each group in each candidate, quantized once with the shared amax of its fused
// siblings (found when a sibling is first quantized: a model held layer by layer scans only the
// layer it scores).
class quantized_cache {
 public:
  quantized_cache(const model_linears& linears, const model_spec& spec, const calibration_stats& stats)
      : linears_(linears), x_amax_(input_amax_by_linear(spec, stats)) {
    for (const linear_spec& l : spec.linears)
      if (linears.has(l.module)) siblings_[scale_sharing_key(l.module)].push_back(&linears.at(l.module));
  }

  quantized_view make(const linear_spec& l, const weight_quant_spec& c) const {
    const llama_linear& W = linears_.at(l.module);
    const cpu::source_matrix src{W.w.data(), cpu::source_dtype::f32, W.out, W.in, l.module};
    const float w_amax = weight_amax(scale_sharing_key(l.module)), x_amax = x_amax_.at(l.module);
    quantized_view q;
    q.format = c.format;
    if (c.format == format_id::fp8_per_tensor) {
      fp8_options o = fp8_options_for(c);
      o.amax = w_amax;
      q.fp8 = cpu::fp8_quantize(src, o);
      q.act = {format_id::fp8_per_tensor, fp8_input_scale(x_amax)};
    } else if (c.format == format_id::nvfp4 || c.format == format_id::nvfp4_w4a16) {
      nvfp4_options o = nvfp4_options_for(c);
      o.global_amax = w_amax;
      q.nvfp4 = cpu::nvfp4_quantize(src, o);
      if (c.format == format_id::nvfp4) q.act = {format_id::nvfp4, nvfp4_input_scale(x_amax)};
    } else {
      q.dense.resize(W.w.size());
      cpu::fake_quant_weight(src, c, q.dense);  // weight-only formats (MX, NF4) are measured as such
    }
    return q;
  }

 private:
  float weight_amax(const std::string& key) const {
    const auto [it, added] = w_amax_.emplace(key, 0.0f);
    if (added)
      for (const llama_linear* W : siblings_.at(key))
        for (float v : W->w) it->second = std::fmax(it->second, std::fabs(v));
    return it->second;
  }

  const model_linears& linears_;
  std::map<std::string, float> x_amax_;
  std::map<std::string, std::vector<const llama_linear*>> siblings_;  // sharing key -> the linears
  mutable std::map<std::string, float> w_amax_;                       // (make() runs on one thread)
};

// x [rows, in] as the quantized runtime rounds it (act.format is not bf16).
std::vector<float> quantize_input(const float* x, int64_t rows, int64_t in, const input_quant& act) {
  const std::span<const float> src(x, size_t(rows * in));
  std::vector<float> xq(src.size());
  if (act.format == format_id::nvfp4) cpu::nvfp4_fake_quant_activations(src, in, act.input_scale, xq);
  else cpu::fp8_fake_quant_activations(src, act.input_scale, xq);
  return xq;
}

// sum over rows and features of (g * (Xq Wq^T - X W^T))^2; g empty: weight 1 (hessian).
double replay_score(const std::vector<float>& x, const std::vector<float>& g, const llama_linear& W,
                    const quantized_view& q, std::vector<float>& buffer) {
  const int64_t T = int64_t(x.size()) / W.in;
  if (T == 0) return 0.0;
  const_map X(x.data(), T, W.in), Wm(W.w.data(), W.out, W.in), Wq(q.weights(buffer).data(), W.out, W.in);
  row_matrix dy;
  if (q.act.format != format_id::bf16) {
    const std::vector<float> xq = quantize_input(x.data(), T, W.in, q.act);
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

// One sequence's routing: MoE block -> per expert its tokens (ascending) and their weights.
struct expert_routing {
  std::vector<int64_t> tokens;
  std::vector<float> weights;
};
using routing_map = std::unordered_map<std::string, std::vector<expert_routing>>;

// x [rows, in] through one quantized linear: the input rounding, then the quantized weights.
row_matrix quantized_linear_output(const float* x, int64_t rows, const llama_linear& W, const quantized_view& q,
                                   std::vector<float>& buffer) {
  const const_map Wq(q.weights(buffer).data(), W.out, W.in);
  if (q.act.format == format_id::bf16) return const_map(x, rows, W.in) * Wq.transpose();
  const std::vector<float> xq = quantize_input(x, rows, W.in, q.act);
  return const_map(xq.data(), rows, W.in) * Wq.transpose();
}

// A routed expert's linears, by the part they play.
struct expert_parts {
  int64_t expert = -1;
  const llama_linear *gate = nullptr, *up = nullptr, *down = nullptr;  // gate: SwiGLU experts only
  size_t gate_k = 0, up_k = 0, down_k = 0;  // their positions in the group's quantized views
};

// The change of one expert's output over its tokens, [T_e, out], with all its linears quantized
// (each with its input rounding); the unquantized output is recomputed from the recorded down input.
row_matrix expert_output_change(const expert_parts& p, const std::vector<quantized_view>& q,
                                const std::unordered_map<std::string, std::vector<float>>& inputs,
                                std::vector<float>& buffer) {
  const std::vector<float>& x = inputs.at((p.gate ? p.gate : p.up)->name);
  const int64_t rows = int64_t(x.size()) / p.up->in;
  row_matrix h = quantized_linear_output(x.data(), rows, *p.up, q[p.up_k], buffer);
  if (p.gate) {  // SwiGLU: silu(gate) * up
    const row_matrix g = quantized_linear_output(x.data(), rows, *p.gate, q[p.gate_k], buffer);
    for (int64_t i = 0; i < h.size(); ++i) {
      const float a = g.data()[i];
      h.data()[i] *= a / (1.0f + std::exp(-a));
    }
  } else {  // relu^2
    for (int64_t i = 0; i < h.size(); ++i) h.data()[i] = h.data()[i] > 0.0f ? h.data()[i] * h.data()[i] : 0.0f;
  }
  row_matrix dy = quantized_linear_output(h.data(), rows, *p.down, q[p.down_k], buffer);
  const std::vector<float>& s = inputs.at(p.down->name);
  dy.noalias() -= const_map(s.data(), rows, p.down->in) * const_map(p.down->w.data(), p.down->out, p.down->in).transpose();
  return dy;
}

// A whole routed-expert group scored at the MoE block output, as Model Optimizer scores experts:
// dB[t] = sum over t's experts e of w_te * dy_e[t] (mapped through fc2_latent_proj when the block
// has one), g = dL/dB; score = sum (g * dB)^2 (g = 1 for hessian). For a block without a latent
// projection dL/dB[t] is recovered from any routed expert's down_proj gradient, which is w_te * g[t].
double moe_block_score(const std::vector<expert_parts>& experts, const std::vector<quantized_view>& q,
                       const std::string& moe, const routing_map& routing,
                       const std::unordered_map<std::string, std::vector<float>>& inputs, const model_linears& linears,
                       const llama_grads* grads, int64_t T, std::vector<float>& buffer) {
  const auto r = routing.find(moe);
  if (r == routing.end()) return 0.0;
  const int64_t D = experts.front().down->out;  // the experts' output width
  row_matrix block = row_matrix::Zero(T, D);
  row_matrix g_block;  // [T, D] when recovered from the experts' gradients
  if (grads) g_block = row_matrix::Zero(T, D);
  for (const expert_parts& p : experts) {
    const expert_routing& er = r->second.at(size_t(p.expert));
    if (er.tokens.empty() || !inputs.count(p.down->name)) continue;
    const row_matrix dy = expert_output_change(p, q, inputs, buffer);
    const std::vector<float>* dy_down = grads ? &grads->dy.at(p.down->name) : nullptr;
    for (size_t i = 0; i < er.tokens.size(); ++i) {
      const int64_t t = er.tokens[i];
      block.row(t) += er.weights[i] * dy.row(int64_t(i));
      if (dy_down && er.weights[i] != 0.0f)
        g_block.row(t) = const_map(dy_down->data() + int64_t(i) * D, 1, D) / er.weights[i];
    }
  }
  const std::string fc2 = moe + ".fc2_latent_proj";
  const bool latent = linears.has(fc2);
  if (latent) {  // the block output is fc2_latent_proj(sum of weighted expert outputs)
    const llama_linear& W = linears.at(fc2);
    block = row_matrix(block * const_map(W.w.data(), W.out, W.in).transpose());
    if (grads) g_block = const_map(grads->dy.at(fc2).data(), T, W.out);
  }
  double s = 0.0;
  for (int64_t i = 0; i < block.size(); ++i) {
    const double v = grads ? double(g_block.data()[i]) * double(block.data()[i]) : double(block.data()[i]);
    s += v * v;
  }
  return s;
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

namespace {

// The quantized candidates of a set of groups, and how their routed experts are scored.
struct group_tables {
  std::vector<std::vector<std::vector<quantized_view>>> views;  // [g][c][linear in g]
  std::vector<std::vector<expert_parts>> experts;                // routed-expert groups: their parts
  std::vector<std::string> moe_of;                               // ... and their MoE block
};

// Each taken group's candidates quantized once; routed-expert groups, scored at their MoE block's
// output, with each expert's parts and view positions.
group_tables prepare_groups(const search_space& space, const model_spec& spec, const model_linears& linears,
                            const quantized_cache& cache, const std::vector<size_t>& taken) {
  group_tables t;
  t.views.resize(space.groups.size());
  t.experts.resize(space.groups.size());
  t.moe_of.resize(space.groups.size());
  for (size_t g : taken) {
    const search_group& G = space.groups[g];
    t.views[g].resize(G.candidates.size());
    for (size_t c = 1; c < G.candidates.size(); ++c)
      for (int i : G.linears)
        if (linears.has(spec.linears[size_t(i)].module))  // MTP linears are not in the forward pass: score 0
          t.views[g][c].push_back(cache.make(spec.linears[size_t(i)], G.candidates[c]));
    std::map<int64_t, expert_parts> by_expert;
    size_t k = 0;
    bool all_routed = true;
    for (int i : G.linears) {
      const linear_spec& l = spec.linears[size_t(i)];
      if (!linears.has(l.module)) continue;
      const size_t at = k++;
      if (l.expert < 0) {
        all_routed = false;
        continue;
      }
      expert_parts& p = by_expert[l.expert];
      p.expert = l.expert;
      const std::string leaf = l.module.substr(l.module.rfind('.') + 1);
      const llama_linear* W = &linears.at(l.module);
      if (leaf == "gate_proj" || leaf == "w1") p.gate = W, p.gate_k = at;
      else if (leaf == "up_proj" || leaf == "w3") p.up = W, p.up_k = at;
      else p.down = W, p.down_k = at;
      const std::string experts = expert_module_of(l);
      t.moe_of[g] = experts.substr(0, experts.rfind('.'));        // "...experts"
      t.moe_of[g] = t.moe_of[g].substr(0, t.moe_of[g].rfind('.'));  // the MoE block
    }
    if (!all_routed || by_expert.empty()) continue;
    for (auto& [e, p] : by_expert)
      if (p.up && p.down) t.experts[g].push_back(p);
  }
  return t;
}

// What one (forward or forward + backward) pass records of a sequence: every linear's input (rows in
// the order the hook sees them, so a routed expert's rows line up with its dY) and the routing.
struct recorded_pass {
  std::unordered_map<std::string, std::vector<float>> inputs;
  routing_map routing;
  forward_hooks hooks() {
    forward_hooks h;
    h.input = [this](const std::string& name, const float* x, int64_t T, int64_t in) {
      std::vector<float>& v = inputs[name];
      v.insert(v.end(), x, x + T * in);
    };
    h.routing = [this](const std::string& moe, int64_t e, const int64_t* toks, const float* w, int64_t n_routed) {
      std::vector<expert_routing>& r = routing[moe];
      if (r.size() <= size_t(e)) r.resize(size_t(e) + 1);
      r[size_t(e)] = {std::vector<int64_t>(toks, toks + n_routed), std::vector<float>(w, w + n_routed)};
    };
    return h;
  }
};

// One sequence's part of the taken groups' scores (fisher with grads, hessian without), at[offset[g] + c].
void score_recorded(const search_space& space, const model_spec& spec, const model_linears& linears,
                    const group_tables& t, const std::vector<size_t>& taken, const recorded_pass& pass,
                    const llama_grads* grads, int64_t T, const std::vector<size_t>& offset, double* at,
                    std::vector<float>& buffer) {
  const std::vector<float> no_gradient;  // hessian: every output weighs 1
  for (size_t g : taken) {
    const search_group& G = space.groups[g];
    if (!t.experts[g].empty()) {  // routed experts: at the MoE block output
      for (size_t c = 1; c < G.candidates.size(); ++c)
        at[offset[g] + c] =
            moe_block_score(t.experts[g], t.views[g][c], t.moe_of[g], pass.routing, pass.inputs, linears, grads, T, buffer);
      continue;
    }
    for (size_t c = 1; c < G.candidates.size(); ++c) {
      size_t k = 0;
      double sum = 0.0;
      for (int i : G.linears) {
        const std::string& name = spec.linears[size_t(i)].module;
        if (!linears.has(name)) continue;
        const quantized_view& q = t.views[g][c][k++];
        const auto x = pass.inputs.find(name);
        if (x == pass.inputs.end()) continue;  // a routed expert no token reached
        const std::vector<float>& dy = grads ? grads->dy.at(name) : no_gradient;
        sum += replay_score(x->second, dy, linears.at(name), q, buffer);
      }
      at[offset[g] + c] = sum;
    }
  }
}

// The layer a group's linears are in (-1: none, as lm_head; the MTP head's are not run and skipped).
// io_error for a group across layers, which layer-by-layer scoring cannot replay.
int group_layer(const search_group& G, const model_spec& spec) {
  int layer = -2;
  for (int i : G.linears) {
    const linear_spec& l = spec.linears[size_t(i)];
    if (l.block >= 0 && spec.blocks[size_t(l.block)].mtp) continue;
    const int at = l.block >= 0 ? spec.blocks[size_t(l.block)].layer : -1;
    if (layer != -2 && at != layer)
      throw io_error(fmt::format("search group '{}' spans layers {} and {}: layer-by-layer scoring replays one layer "
                                 "at a time (hold the whole model instead)", G.name, layer, at));
    layer = at;
  }
  return layer;
}

}  // namespace

bool scores_layer_by_layer(score_method method) { return method == score_method::hessian; }

sensitivity_scores score_groups(causal_lm& model, const search_space& space, const calibration_stats& stats,
                                std::span<const std::vector<int32_t>> sequences, score_method method,
                                const progress_callback& progress, const run_world& world) {
  const model_spec& spec = model.spec();
  sensitivity_scores out;
  out.score.resize(space.groups.size());
  for (size_t g = 0; g < space.groups.size(); ++g) out.score[g].assign(space.groups[g].candidates.size(), 0.0);
  bool holds_all = true;
  for (int64_t l = 0; l < model.layer_count(); ++l) holds_all = holds_all && model.holds_layer(l);
  if (!holds_all && !scores_layer_by_layer(method))
    throw io_error(fmt::format("{} scores need the whole model (a backward pass, or the final logits); this one holds "
                               "its layers one at a time", to_string(method)));

  // Each sequence's part of every score, [sequence][offset[g] + c]: the process that takes the
  // sequence computes it, and every process adds them up in sequence order (the bits a single
  // process gets, whatever the number of processes and threads).
  const int64_t n = int64_t(sequences.size());
  std::vector<size_t> offset(space.groups.size() + 1, 0);
  for (size_t g = 0; g < space.groups.size(); ++g) offset[g + 1] = offset[g] + space.groups[g].candidates.size();
  std::vector<int64_t> mine;
  for (int64_t s = 0; s < n; ++s)
    if (world.takes(s)) mine.push_back(s);
  std::vector<std::vector<double>> part(static_cast<size_t>(n));
  for (int64_t s : mine) part[size_t(s)].assign(offset.back(), 0.0);
  int64_t done = 0;
  const int64_t own = int64_t(mine.size());
  std::vector<size_t> enabled;
  for (size_t g = 0; g < space.groups.size(); ++g)
    if (!space.groups[g].disabled) enabled.push_back(g);

  world.stage([&] {
    first_error error;
    if (!holds_all) {
      // Hessian scores are layer-local: every sequence's residual stream passes through one layer at a
      // time, recording that layer's inputs, and the layer's groups are scored from them (the same
      // bits as from a whole forward pass: the same functions on the same values).
      std::vector<std::vector<size_t>> by_layer(size_t(model.layer_count() + 1));  // [layer + 1]: lm_head's at 0
      for (size_t g : enabled) {
        const int layer = group_layer(space.groups[g], spec);
        if (layer >= -1 && layer < model.layer_count()) by_layer[size_t(layer + 1)].push_back(g);
      }
      const int64_t total = model.layer_count() + 1;
      std::vector<std::vector<float>> h(static_cast<size_t>(own));
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t m = 0; m < own; ++m) error.run([&] { h[size_t(m)] = model.embed(sequences[size_t(mine[size_t(m)])]); });
      error.rethrow();
      for (int64_t l = 0; l <= model.layer_count(); ++l) {
        const bool head = l == model.layer_count();
        const std::vector<size_t>& taken = by_layer[head ? 0 : size_t(l + 1)];
        std::optional<layer_loan> here;  // (the head needs no layer)
        if (!head) here.emplace(model, l);
        const model_linears linears(model);
        const quantized_cache cache(linears, spec, stats);
        const group_tables t = prepare_groups(space, spec, linears, cache, taken);
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t m = 0; m < own; ++m)
          error.run([&] {
            const int64_t s = mine[size_t(m)], T = int64_t(sequences[size_t(s)].size());
            recorded_pass pass;
            std::vector<float> buffer;
            if (head) (void)model.head(h[size_t(m)].data(), T, pass.hooks()), h[size_t(m)] = {};
            else model.layer_forward(l, h[size_t(m)].data(), T, pass.hooks());
            score_recorded(space, spec, linears, t, taken, pass, nullptr, T, offset, part[size_t(s)].data(), buffer);
          });
        error.rethrow();
        if (progress) progress(l + 1, total);
      }
      return;
    }
    const model_linears linears(model);
    const quantized_cache cache(linears, spec, stats);
    const group_tables t = prepare_groups(space, spec, linears, cache, enabled);
    if (method == score_method::kl) {
      const int64_t V = model.vocab(), total = own * int64_t(space.groups.size());
      std::vector<std::vector<float>> base(static_cast<size_t>(n));
#pragma omp parallel for schedule(dynamic, 1)
      for (int64_t m = 0; m < own; ++m) {
        const int64_t s = mine[size_t(m)];
        base[size_t(s)] = model.forward(sequences[size_t(s)]);
      }
      for (size_t g = 0; g < space.groups.size(); ++g) {
        const search_group& G = space.groups[g];
        for (size_t c = 1; c < G.candidates.size() && !G.disabled; ++c) {
          struct swapped {
            llama_linear* W;
            std::vector<float> w;
            input_quant act;
          };
          std::vector<swapped> saved;  // swap the group in, restore after
          size_t k = 0;
          for (int i : G.linears) {
            const std::string& name = spec.linears[size_t(i)].module;
            if (!linears.has(name)) continue;
            llama_linear& W = linears.at(name);
            const quantized_view& q = t.views[g][c][k++];
            swapped sw{&W, {}, q.act};
            q.dequantize(sw.w);
            std::swap(W.w, sw.w);
            std::swap(W.act, sw.act);
            saved.push_back(std::move(sw));
          }
#pragma omp parallel for schedule(dynamic, 1)
          for (int64_t m = 0; m < own; ++m) {
            const int64_t s = mine[size_t(m)];
            part[size_t(s)][offset[g] + c] = kl_mean(base[size_t(s)], model.forward(sequences[size_t(s)]), V);
          }
          for (swapped& sw : saved) std::swap(sw.W->w, sw.w), std::swap(sw.W->act, sw.act);
        }
        done += own;
        if (progress) progress(done, total);
      }
      return;
    }
    // One (forward or forward + backward) pass per sequence records every linear's input, then the
    // replays. Sequences in parallel, one (single-threaded) pass each, as calibration runs them: a
    // pass's bits do not depend on the thread count that way (multi-threaded products may group
    // their sums otherwise), and neither do the scores.
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t m = 0; m < own; ++m)
      error.run([&] {
        const int64_t s = mine[size_t(m)];
        recorded_pass pass;
        std::vector<float> buffer;  // a candidate's weights, dequantized where a replay uses them
        llama_grads grads;
        if (method == score_method::fisher) grads = model.forward_backward(sequences[size_t(s)], pass.hooks());
        else model.forward(sequences[size_t(s)], pass.hooks());
        score_recorded(space, spec, linears, t, enabled, pass, method == score_method::fisher ? &grads : nullptr,
                       int64_t(sequences[size_t(s)].size()), offset, part[size_t(s)].data(), buffer);
#pragma omp critical(mixq_score_progress)
        if (progress) progress(++done, own);
      });
    error.rethrow();
  });
  if (world.size() > 1) {  // every process's parts, as raw doubles in its sequence order
    std::string bytes;
    for (int64_t s : mine) bytes.append(reinterpret_cast<const char*>(part[size_t(s)].data()), offset.back() * sizeof(double));
    const std::vector<std::string> all = world.all_gather(bytes);
    std::vector<size_t> read(all.size(), 0);
    for (int64_t s = 0; s < n; ++s) {
      const size_t r = size_t(s % world.size());
      if (int(r) == world.rank()) continue;
      part[size_t(s)].resize(offset.back());
      std::memcpy(part[size_t(s)].data(), all[r].data() + read[r], offset.back() * sizeof(double));
      read[r] += offset.back() * sizeof(double);
    }
  }
  for (int64_t s = 0; s < n; ++s)
    for (size_t g = 0; g < space.groups.size(); ++g)
      for (size_t c = 1; c < space.groups[g].candidates.size(); ++c) out.score[g][c] += part[size_t(s)][offset[g] + c];
  if (method == score_method::kl)
    for (auto& scores : out.score)
      for (double& v : scores) v /= double(std::max<int64_t>(n, 1));
  for (const auto& s : sequences) out.tokens += int64_t(s.size());
  out.sequences = n;
  for (size_t g = 0; g < space.groups.size(); ++g)
    if (!space.groups[g].disabled) make_monotone_in_bits(space.groups[g], out.score[g]);
  return out;
}

}  // namespace mixq
