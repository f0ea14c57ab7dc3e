// The model's vectorized kernels (kernels/cpu/row_math, kernels/cpu/attention) against plain
// double-precision references: e^x over a sweep of every 61st float in its range, log-sum-exp,
// SwiGLU and its gradient, and causal GQA attention forward and backward over head sizes that are
// and are not multiples of the 16-key chunk, for sequences shorter and longer than one chunk.
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <limits>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/attention.hpp"
#include "kernels/cpu/row_math.hpp"
#include "relative_error.hpp"

namespace mixq {
namespace {

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

using testing::relative_error;

TEST(FastExp, WithinTwoUlpOverItsRange) {
  // every 61st float bit pattern from -86.9 to 88.7 (both signs), through the dispatched kernel
  std::vector<float> x;
  for (uint32_t u = 0; u < 0x7f800000u; u += 61) {
    const float f = std::bit_cast<float>(u);
    if (f <= 88.7f) x.push_back(f);
    if (f <= 86.9f) x.push_back(-f);
  }
  std::vector<float> y = x;
  cpu::exp_inplace(y.data(), int64_t(y.size()));
  double worst_ulp = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = std::exp(x[i]);
    const double ulp = std::abs(double(y[i]) - double(want)) / (std::nextafter(want, INFINITY) - want);
    worst_ulp = std::max(worst_ulp, ulp);
    if (ulp > 2.0) { ASSERT_LE(ulp, 2.0) << "e^" << x[i] << " = " << y[i] << ", want " << want; }
  }
  EXPECT_GT(worst_ulp, 0.0);  // it is an approximation: the sweep must have seen some error
  RecordProperty("worst_ulp", std::to_string(worst_ulp));
}

TEST(FastExp, OutOfRangeAndInfinities) {
  std::vector<float> x = {-87.0f, -100.0f, -1e30f, -INFINITY, 88.8f, 1e30f, INFINITY, 0.0f, -0.0f};
  cpu::exp_inplace(x.data(), int64_t(x.size()));
  for (int i = 0; i < 4; ++i) EXPECT_EQ(x[size_t(i)], 0.0f) << i;
  for (int i = 4; i < 7; ++i) EXPECT_EQ(x[size_t(i)], INFINITY) << i;
  EXPECT_EQ(x[7], 1.0f);
  EXPECT_EQ(x[8], 1.0f);
  std::vector<float> nan = {std::numeric_limits<float>::quiet_NaN()};
  cpu::exp_inplace(nan.data(), 1);
  EXPECT_TRUE(std::isnan(nan[0]));
}

TEST(LogSumExp, MatchesDouble) {
  for (int64_t n : {1, 3, 16, 17, 512, 1000}) {
    const std::vector<float> x = random_floats(size_t(n), uint32_t(n), 5.0f);
    double m = -INFINITY, s = 0.0;
    for (float v : x) m = std::max(m, double(v));
    for (float v : x) s += std::exp(double(v) - m);
    EXPECT_NEAR(cpu::log_sum_exp(x.data(), n), m + std::log(s), 1e-6 * (1.0 + std::abs(m))) << n;
  }
}

TEST(SwiGlu, ForwardAndBackwardMatchDouble) {
  const int64_t n = 1001;
  const auto gate = random_floats(size_t(n), 1, 4.0f), up = random_floats(size_t(n), 2), dout = random_floats(size_t(n), 3);
  const size_t len = static_cast<size_t>(n);
  std::vector<float> out(len), dgate(len), dup(len);
  cpu::swiglu(out.data(), gate.data(), up.data(), n);
  cpu::swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), n);
  std::vector<double> want_out(len), want_dgate(len), want_dup(len);
  for (size_t i = 0; i < size_t(n); ++i) {
    const double g = gate[i], sig = 1.0 / (1.0 + std::exp(-g));
    want_out[i] = g * sig * up[i];
    want_dup[i] = dout[i] * g * sig;
    want_dgate[i] = dout[i] * up[i] * (sig + g * sig * (1.0 - sig));
  }
  EXPECT_LT(relative_error(out, want_out), 1e-6);
  EXPECT_LT(relative_error(dup, want_dup), 1e-6);
  EXPECT_LT(relative_error(dgate, want_dgate), 1e-6);
}

struct attention_case {
  int64_t T, nh, nkv, hd;
};

// softmax(q k^T / sqrt(hd), causal) v and its gradients, in double, the textbook way.
void reference_attention(const attention_case& c, const std::vector<float>& q, const std::vector<float>& k,
                         const std::vector<float>& v, const std::vector<float>& dout, std::vector<double>& out,
                         std::vector<double>& dq, std::vector<double>& dk, std::vector<double>& dv) {
  const int64_t T = c.T, hd = c.hd, qs = c.nh * hd, ks = c.nkv * hd;
  out.assign(size_t(T * qs), 0.0);
  dq.assign(size_t(T * qs), 0.0);
  dk.assign(size_t(T * ks), 0.0);
  dv.assign(size_t(T * ks), 0.0);
  const double scale = 1.0 / std::sqrt(double(hd));
  for (int64_t h = 0; h < c.nh; ++h) {
    const int64_t g = h / (c.nh / c.nkv);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> p(size_t(t + 1)), dp(size_t(t + 1));
      double m = -INFINITY, sum = 0.0;
      for (int64_t j = 0; j <= t; ++j) {
        double s = 0.0;
        for (int64_t d = 0; d < hd; ++d) s += double(q[size_t(t * qs + h * hd + d)]) * k[size_t(j * ks + g * hd + d)];
        p[size_t(j)] = s * scale;
        m = std::max(m, p[size_t(j)]);
      }
      for (double& x : p) sum += x = std::exp(x - m);
      for (double& x : p) x /= sum;
      double c_dot = 0.0;
      for (int64_t j = 0; j <= t; ++j) {
        double dpj = 0.0;
        for (int64_t d = 0; d < hd; ++d) {
          const double vd = v[size_t(j * ks + g * hd + d)], dod = dout[size_t(t * qs + h * hd + d)];
          out[size_t(t * qs + h * hd + d)] += p[size_t(j)] * vd;
          dv[size_t(j * ks + g * hd + d)] += p[size_t(j)] * dod;
          dpj += dod * vd;
        }
        dp[size_t(j)] = dpj;
        c_dot += dpj * p[size_t(j)];
      }
      for (int64_t j = 0; j <= t; ++j) {
        const double ds = p[size_t(j)] * (dp[size_t(j)] - c_dot) * scale;
        for (int64_t d = 0; d < hd; ++d) {
          dq[size_t(t * qs + h * hd + d)] += ds * k[size_t(j * ks + g * hd + d)];
          dk[size_t(j * ks + g * hd + d)] += ds * q[size_t(t * qs + h * hd + d)];
        }
      }
    }
  }
}

class AttentionKernel : public ::testing::TestWithParam<attention_case> {};

TEST_P(AttentionKernel, MatchesDoubleReferenceAndThreadCount) {
  const attention_case c = GetParam();
  const size_t nq = size_t(c.T * c.nh * c.hd), nk = size_t(c.T * c.nkv * c.hd);
  const auto q = random_floats(nq, 11, 2.0f), k = random_floats(nk, 12, 2.0f), v = random_floats(nk, 13);
  const auto dout = random_floats(nq, 14);
  std::vector<double> want_out, want_dq, want_dk, want_dv;
  reference_attention(c, q, k, v, dout, want_out, want_dq, want_dk, want_dv);

  std::vector<float> out(nq), dq(nq), dk(nk), dv(nk);
  cpu::attention_forward(out.data(), q.data(), k.data(), v.data(), c.T, c.nh, c.nkv, c.hd);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), c.T, c.nh, c.nkv,
                          c.hd);
  EXPECT_LT(relative_error(out, want_out), 2e-6);
  EXPECT_LT(relative_error(dq, want_dq), 1e-5);
  EXPECT_LT(relative_error(dk, want_dk), 1e-5);
  EXPECT_LT(relative_error(dv, want_dv), 2e-6);

  // the same bits on one thread as on all
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<float> out1(nq), dq1(nq), dk1(nk), dv1(nk);
  cpu::attention_forward(out1.data(), q.data(), k.data(), v.data(), c.T, c.nh, c.nkv, c.hd);
  cpu::attention_backward(dq1.data(), dk1.data(), dv1.data(), dout.data(), q.data(), k.data(), v.data(), c.T, c.nh,
                          c.nkv, c.hd);
  omp_set_num_threads(threads);
  EXPECT_EQ(out, out1);
  EXPECT_EQ(dq, dq1);
  EXPECT_EQ(dk, dk1);
  EXPECT_EQ(dv, dv1);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionKernel,
                         ::testing::Values(attention_case{1, 2, 1, 8}, attention_case{5, 4, 4, 8},
                                         attention_case{17, 8, 4, 8}, attention_case{64, 6, 3, 24},
                                         attention_case{130, 4, 2, 64}, attention_case{300, 8, 1, 16},
                                         attention_case{33, 2, 2, 1}, attention_case{200, 4, 2, 32},
                                         attention_case{70, 2, 1, 128}, attention_case{3, 2, 1, 4},
                                         attention_case{17, 4, 2, 4}, attention_case{33, 3, 1, 4},
                                         attention_case{31, 2, 1, 31}, attention_case{20, 2, 2, 5}));

}  // namespace
}  // namespace mixq
