#include "pipeline/synth_weights.hpp"

#include <cmath>
#include <random>

#include "formats/minifloat.hpp"

namespace mixq {

synth_weight synth_make_weight(std::string name, int64_t rows, int64_t cols, synth_distribution dist, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::chi_squared_distribution<double> chi2(3.0);
  const double sigma = 1.0 / std::sqrt(double(cols));  // fan-in scaled, as trained linears are
  synth_weight w{std::move(name), rows, cols, std::vector<uint16_t>(size_t(rows * cols))};
  std::vector<double> channel_gain(size_t(cols), 1.0);
  if (dist == synth_distribution::outlier_channels)
    for (int64_t c = 0; c < cols; ++c)
      if (rng() % 64 == 0) channel_gain[size_t(c)] = 8.0 + 24.0 * double(rng() % 1000) / 1000.0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      double v = normal(rng);
      if (dist == synth_distribution::heavy_tailed) v /= std::sqrt(chi2(rng) / 3.0);  // Student-t, 3 dof
      v *= sigma * channel_gain[size_t(c)];
      w.bf16[size_t(r * cols + c)] = bf16_encode(float(v));
    }
  return w;
}

std::vector<synth_weight> synth_builtin_tensor_set() {
  using d = synth_distribution;
  std::vector<synth_weight> set;
  set.push_back(synth_make_weight("layers.0.self_attn.q_proj.weight", 512, 512, d::normal, 1));
  set.push_back(synth_make_weight("layers.0.self_attn.o_proj.weight", 512, 512, d::outlier_channels, 2));
  set.push_back(synth_make_weight("layers.1.mixer.in_proj.weight", 1024, 512, d::outlier_channels, 3));
  set.push_back(synth_make_weight("layers.1.mixer.out_proj.weight", 512, 512, d::heavy_tailed, 4));
  for (int e = 0; e < 4; ++e) {
    set.push_back(synth_make_weight("layers.2.mixer.experts." + std::to_string(e) + ".up_proj.weight", 256, 512,
                                    d::heavy_tailed, 10 + uint64_t(e)));
    set.push_back(synth_make_weight("layers.2.mixer.experts." + std::to_string(e) + ".down_proj.weight", 512, 256,
                                    d::heavy_tailed, 20 + uint64_t(e)));
  }
  return set;
}

}  // namespace mixq
