// parallel_layout's shares and errors, and sharded models of every architecture: tp / ep ranks
// running as threads over an in-process comm give the logits, the loss and every dY (their share of
// it) of the whole model in one process.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "model_test_support.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/model/layer_stream.hpp"
#include "thread_group_comm.hpp"

namespace mixq {
namespace {

TEST(ParallelLayout, RanksAndShares) {
  const parallel_layout l = parallel_layout::of_rank(5, /*tp*/ 2, /*ep*/ 2, /*pp*/ 2);
  EXPECT_EQ(l.world(), 8);
  EXPECT_EQ(l.tp_rank, 1);
  EXPECT_EQ(l.ep_rank, 0);
  EXPECT_EQ(l.pp_rank, 1);
  EXPECT_EQ(l.tensor_share(8, "heads"), (index_range{4, 8}));
  EXPECT_EQ(l.expert_share(6), (index_range{0, 3}));
  EXPECT_EQ(l.layer_share(7), (index_range{4, 7}));  // stages of 4 and 3 layers
  EXPECT_EQ(parallel_layout::of_rank(0, 1, 1, 1, 3).data_share(10), (index_range{0, 4}));
  EXPECT_EQ(parallel_layout::of_rank(2, 1, 1, 1, 3).data_share(10), (index_range{7, 10}));
  EXPECT_TRUE(parallel_layout{}.single());
}

TEST(ParallelLayout, ErrorsSayWhatDoesNotDivide) {
  const parallel_layout l = parallel_layout::of_rank(0, 3);
  try {
    (void)l.tensor_share(8, "KV heads");
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "tp 3 does not divide the 8 KV heads: each rank needs an equal share");
  }
  EXPECT_THROW((void)parallel_layout::of_rank(4, 2, 2), std::invalid_argument);
  EXPECT_THROW((void)parallel_layout::of_rank(0, 0), std::invalid_argument);
  EXPECT_THROW((void)parallel_layout::of_rank(0, 1, 1, 4).layer_share(3), std::invalid_argument);
  // a context whose group disagrees with its layout
  testing::thread_group g(3);
  parallel_context ctx{parallel_layout::of_rank(0, 2), &g.member(0), nullptr};
  EXPECT_THROW(ctx.check(), std::invalid_argument);
}

// The output columns a tp rank holds of a column-parallel linear: an equal contiguous share, except
// Mamba's in_proj, whose output [z (I) | x (I) | B (G·N) | C (G·N) | dt (Hm)] is split part by part
// (heads for z, x and dt; groups for B and C), as Megatron splits it.
std::vector<index_range> share_columns(const std::string& name, int64_t out, const parallel_layout& l,
                                       const model_spec& spec) {
  const auto part = [&](int64_t begin, int64_t n) {
    return index_range{begin + n / l.tp * l.tp_rank, begin + n / l.tp * (l.tp_rank + 1)};
  };
  if (!name.ends_with("mixer.in_proj")) return {part(0, out)};
  const model_dims& d = spec.dims;
  const int64_t I = d.mamba_heads * d.mamba_head_dim, GN = d.mamba_groups * d.ssm_state;
  return {part(0, I), part(I, I), part(2 * I, GN), part(2 * I + GN, GN), part(2 * I + 2 * GN, d.mamba_heads)};
}

struct sharding_case {
  synth_arch arch;
  int tp, ep;
};

class ShardedModel : public ::testing::TestWithParam<sharding_case> {};

TEST_P(ShardedModel, MatchesTheWholeModel) {
  const sharding_case sc = GetParam();
  const testing::synth_dir d(sc.arch);
  const auto whole_model = load_causal_lm(d.dir);
  const causal_lm& whole = *whole_model;
  std::vector<int32_t> tokens;
  for (int32_t t = 0; t < 20; ++t) tokens.push_back((t * 53 + 7) % int32_t(whole.vocab()));
  const std::vector<float> want_logits = whole.forward(tokens);
  const llama_grads want = whole.forward_backward(tokens);

  const int world = sc.tp * sc.ep;
  std::vector<std::unique_ptr<testing::thread_group>> tp_groups, ep_groups;
  for (int e = 0; e < sc.ep; ++e) tp_groups.push_back(std::make_unique<testing::thread_group>(sc.tp));
  for (int t = 0; t < sc.tp; ++t) ep_groups.push_back(std::make_unique<testing::thread_group>(sc.ep));
  const size_t n = static_cast<size_t>(world);
  std::vector<std::vector<float>> logits(n), layer_logits(n);
  std::vector<llama_grads> grads(n);
  std::vector<parallel_layout> layouts(n);
  std::vector<std::string> errors(n);
  std::vector<std::thread> ranks;
  for (int r = 0; r < world; ++r)
    ranks.emplace_back([&, r] {
      try {
        const parallel_layout l = parallel_layout::of_rank(r, sc.tp, sc.ep);
        const parallel_context ctx{l, &tp_groups[size_t(l.ep_rank)]->member(l.tp_rank),
                                   &ep_groups[size_t(l.tp_rank)]->member(l.ep_rank)};
        const auto share = load_causal_lm(d.dir, ctx);
        layouts[size_t(r)] = l;
        logits[size_t(r)] = share->forward(tokens);
        grads[size_t(r)] = share->forward_backward(tokens);
        // the same share read a layer at a time
        const auto on_demand = load_causal_lm(d.dir, ctx, layer_weights::on_demand);
        const std::span<const int32_t> one[] = {tokens};
        layer_pass pass;
        pass.logits = [&](int64_t, std::vector<float>& got) { layer_logits[size_t(r)] = std::move(got); };
        run_layer_by_layer(*on_demand, one, pass);
      } catch (const std::exception& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (std::thread& t : ranks) t.join();

  for (int r = 0; r < world; ++r) {
    ASSERT_EQ(errors[size_t(r)], "") << "rank " << r;
    const parallel_layout& l = layouts[size_t(r)];
    EXPECT_LT(testing::max_relative(logits[size_t(r)], want_logits), 1e-5) << "rank " << r;
    EXPECT_LT(testing::max_relative(layer_logits[size_t(r)], want_logits), 1e-5) << "rank " << r << ", layer by layer";
    EXPECT_NEAR(grads[size_t(r)].loss, want.loss, 1e-6 * want.loss) << "rank " << r;
    for (const auto& [name, dy] : grads[size_t(r)].dy) {
      const std::vector<float>& full = want.dy.at(name);
      ASSERT_FALSE(full.empty() && !dy.empty()) << name;
      if (dy.size() == full.size()) {  // whole outputs: row-parallel linears, router, experts, lm_head
        EXPECT_LT(testing::max_relative(dy, full), 1e-4) << name << " on rank " << r;
      } else {  // a column-parallel share: this rank's columns of [T, out]
        const int64_t T = int64_t(tokens.size()), out = int64_t(full.size()) / T;
        const std::vector<index_range> cols = share_columns(name, out, l, whole.spec());
        std::vector<float> slice;
        for (int64_t t = 0; t < T; ++t)
          for (const index_range& c : cols)
            slice.insert(slice.end(), full.begin() + t * out + c.begin, full.begin() + t * out + c.end);
        ASSERT_EQ(slice.size(), dy.size()) << name;
        EXPECT_LT(testing::max_relative(dy, slice), 1e-4) << name << " on rank " << r;
      }
    }
    // every linear of the whole model is here, except the experts of the other ep ranks
    if (sc.ep == 1) EXPECT_EQ(grads[size_t(r)].dy.size(), want.dy.size()) << "rank " << r;
    else EXPECT_LT(grads[size_t(r)].dy.size(), want.dy.size()) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, ShardedModel,
                         ::testing::Values(sharding_case{synth_arch::llama, 2, 1},
                                           sharding_case{synth_arch::mixtral, 2, 1},
                                           sharding_case{synth_arch::mixtral, 1, 2},
                                           sharding_case{synth_arch::qwen3_moe, 2, 2},
                                           sharding_case{synth_arch::qwen3_moe, 1, 4},
                                           sharding_case{synth_arch::nemotron_h, 2, 1},
                                           sharding_case{synth_arch::nemotron_h, 1, 4},
                                           sharding_case{synth_arch::nemotron_h, 2, 2}),
                         [](const auto& param_info) {
                           const auto& c = param_info.param;
                           return std::string(to_string(c.arch)) + "_tp" + std::to_string(c.tp) +
                                  "_ep" + std::to_string(c.ep);
                         });

}  // namespace
}  // namespace mixq
