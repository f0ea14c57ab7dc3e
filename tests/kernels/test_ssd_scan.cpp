// The chunked SSD scan (kernels/cpu/ssd_scan) against the sequential recurrence in double
// (ssd_scan_reference.hpp): y, dx, dB, dC and ddt over sequences shorter than, equal to, one off and
// several times the chunk, one and several groups of several heads, small heads and Nemotron-H's
// (P = 64, N = 128), dt from softplus and dt large enough that a step's decay underflows; the same
// bits on one thread as on several.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/ssd_scan.hpp"
#include "tests/kernels/ssd_scan_reference.hpp"
#include "relative_error.hpp"

namespace mixq {
namespace {

struct ssd_case {
  int64_t T, Hm, P, G, N;
  bool large_dt;  // one step in eight with dt = 5 (e^{5 A} down to e^-80)
};

void PrintTo(const ssd_case& c, std::ostream* os) {
  *os << "T" << c.T << "_Hm" << c.Hm << "_P" << c.P << "_G" << c.G << "_N" << c.N << (c.large_dt ? "_large_dt" : "");
}

using testing::relative_error;

// The columns [lo, lo + width) of each row of [T, stride].
template <class V>
V columns(const V& m, int64_t T, int64_t stride, int64_t lo, int64_t width) {
  V out;
  for (int64_t t = 0; t < T; ++t)
    out.insert(out.end(), m.begin() + t * stride + lo, m.begin() + t * stride + lo + width);
  return out;
}

struct ssd_inputs {
  std::vector<float> xbc, dt, A, D, dy;
};

ssd_inputs make_inputs(const ssd_case& c, int64_t stride) {
  std::mt19937 rng(uint32_t(c.T * 131 + c.Hm * 17 + c.P * 7 + c.N + c.large_dt));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  ssd_inputs in;
  in.xbc.resize(size_t(c.T * stride));
  for (float& v : in.xbc) v = normal(rng);
  in.dt.resize(size_t(c.T * c.Hm));
  for (float& v : in.dt) v = std::log1p(std::exp(-4.5f + 1.5f * normal(rng)));  // softplus: mostly 0.001 to 0.1
  if (c.large_dt)
    for (size_t i = 0; i < in.dt.size(); i += 8) in.dt[i] = 5.0f;
  in.A.resize(size_t(c.Hm));
  for (float& v : in.A) v = -std::exp(uniform(rng) * std::log(16.0f));  // A = -exp(A_log) in [-16, -1]
  in.D.resize(size_t(c.Hm));
  for (float& v : in.D) v = normal(rng);
  in.dy.resize(size_t(c.T * c.Hm * c.P));
  for (float& v : in.dy) v = normal(rng);
  return in;
}

struct ssd_outputs {
  std::vector<float> y, dxbc, ddt;
};

ssd_outputs run_kernel(const ssd_case& c, const ssd_inputs& in, int64_t stride) {
  const int64_t I = c.Hm * c.P;
  ssd_outputs out;
  out.y.assign(size_t(c.T * I), 0.0f);
  out.dxbc.assign(in.xbc.size(), 0.0f);
  out.ddt.assign(in.dt.size(), 0.0f);
  const float* x = in.xbc.data();
  cpu::ssd_scan_forward(out.y.data(), x, x + I, x + I + c.G * c.N, stride, in.dt.data(), in.A.data(), in.D.data(), c.T,
                        c.Hm, c.P, c.G, c.N);
  float* dx = out.dxbc.data();
  cpu::ssd_scan_backward(dx, dx + I, dx + I + c.G * c.N, out.ddt.data(), in.dy.data(), x, x + I, x + I + c.G * c.N,
                         stride, in.dt.data(), in.A.data(), in.D.data(), c.T, c.Hm, c.P, c.G, c.N);
  return out;
}

class SsdScan : public ::testing::TestWithParam<ssd_case> {};

TEST_P(SsdScan, MatchesSequentialDoubleAndThreadCount) {
  const ssd_case c = GetParam();
  const int64_t I = c.Hm * c.P, GN = c.G * c.N, stride = I + 2 * GN + 3;  // padded rows, like xBC's
  const ssd_inputs in = make_inputs(c, stride);
  const ssd_outputs got = run_kernel(c, in, stride);

  const test::ssd_shape s{c.T, c.Hm, c.P, c.G, c.N, stride};
  const float* x = in.xbc.data();
  std::vector<double> y, dxbc(in.xbc.size(), 0.0), ddt(in.dt.size(), 0.0);
  test::ssd_reference_forward(y, x, x + I, x + I + GN, in.dt.data(), in.A.data(), in.D.data(), s);
  // the reference writes dB and dC at their own columns of the same [T, stride] rows
  std::vector<double> dB(dxbc.size(), 0.0), dC(dxbc.size(), 0.0);
  test::ssd_reference_backward(dxbc, dB, dC, ddt, in.dy.data(), x, x + I, x + I + GN, in.dt.data(), in.A.data(),
                               in.D.data(), s);
  const auto dx_want = columns(dxbc, c.T, stride, 0, I);
  const auto dB_want = columns(dB, c.T, stride, 0, GN);
  const auto dC_want = columns(dC, c.T, stride, 0, GN);
  const double ey = relative_error(got.y, y);
  const double ex = relative_error(columns(got.dxbc, c.T, stride, 0, I), dx_want);
  const double eB = relative_error(columns(got.dxbc, c.T, stride, I, GN), dB_want);
  const double eC = relative_error(columns(got.dxbc, c.T, stride, I + GN, GN), dC_want);
  const double edt = relative_error(got.ddt, ddt);
  RecordProperty("errors", ::testing::PrintToString(std::vector<double>{ey, ex, eB, eC, edt}));
  EXPECT_LT(ey, 1e-5);
  EXPECT_LT(ex, 1e-5);
  EXPECT_LT(eB, 1e-5);
  EXPECT_LT(eC, 1e-5);
  EXPECT_LT(edt, 1e-5);
  // the padding columns stay untouched
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t k = I + 2 * GN; k < stride; ++k) ASSERT_EQ(got.dxbc[size_t(t * stride + k)], 0.0f);

  // the same bits on one thread as on several
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const ssd_outputs one = run_kernel(c, in, stride);
  omp_set_num_threads(std::max(threads, 4));
  const ssd_outputs many = run_kernel(c, in, stride);
  omp_set_num_threads(threads);
  EXPECT_EQ(got.y, one.y);
  EXPECT_EQ(got.dxbc, one.dxbc);
  EXPECT_EQ(got.ddt, one.ddt);
  EXPECT_EQ(many.y, one.y);
  EXPECT_EQ(many.dxbc, one.dxbc);
  EXPECT_EQ(many.ddt, one.ddt);
}

constexpr int64_t L = cpu::ssd_chunk;
INSTANTIATE_TEST_SUITE_P(
    Shapes, SsdScan,
    ::testing::Values(ssd_case{1, 1, 4, 1, 8, false}, ssd_case{7, 6, 4, 2, 8, false}, ssd_case{L - 1, 6, 4, 2, 8, true},
                    ssd_case{L, 1, 4, 1, 8, false}, ssd_case{L + 1, 6, 4, 2, 8, true}, ssd_case{300, 6, 4, 2, 8, false},
                    ssd_case{300, 6, 4, 2, 8, true}, ssd_case{300, 3, 4, 1, 8, true}, ssd_case{2 * L, 4, 4, 4, 8, false},
                    ssd_case{1, 4, 64, 2, 128, false}, ssd_case{L + 1, 4, 64, 2, 128, true},
                    ssd_case{300, 4, 64, 2, 128, false}, ssd_case{300, 4, 64, 2, 128, true}));

// The backward adds into its outputs.
TEST(SsdScan, BackwardAccumulates) {
  const ssd_case c{100, 4, 4, 2, 8, false};
  const int64_t I = c.Hm * c.P, GN = c.G * c.N, stride = I + 2 * GN;
  const ssd_inputs in = make_inputs(c, stride);
  const ssd_outputs once = run_kernel(c, in, stride);
  std::vector<float> dxbc(in.xbc.size()), ddt(in.dt.size());
  for (size_t i = 0; i < dxbc.size(); ++i) dxbc[i] = float(i % 7) - 3.0f;
  for (size_t i = 0; i < ddt.size(); ++i) ddt[i] = float(i % 5) - 2.0f;
  std::vector<double> dxbc_want(dxbc.size()), ddt_want(ddt.size());
  for (size_t i = 0; i < dxbc.size(); ++i) dxbc_want[i] = double(dxbc[i]) + once.dxbc[i];
  for (size_t i = 0; i < ddt.size(); ++i) ddt_want[i] = double(ddt[i]) + once.ddt[i];
  const float* x = in.xbc.data();
  float* dx = dxbc.data();
  cpu::ssd_scan_backward(dx, dx + I, dx + I + GN, ddt.data(), in.dy.data(), x, x + I, x + I + GN, stride, in.dt.data(),
                         in.A.data(), in.D.data(), c.T, c.Hm, c.P, c.G, c.N);
  EXPECT_LT(relative_error(dxbc, dxbc_want), 1e-6);
  EXPECT_LT(relative_error(ddt, ddt_want), 1e-6);
}

}  // namespace
}  // namespace mixq
