// Sharded models across real processes: run under `mpirun -np N`, every rank loads its tp / ep share
// of a synthetic checkpoint (each architecture), runs forward and forward+backward with the groups
// of MPI_COMM_WORLD, and must get the whole model's logits and loss (computed on the same rank in
// one piece) — and the same bits as every other rank, the deterministic-reduction contract.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>

#include "../pipeline/model_test_support.hpp"
#include "pipeline/model/llama.hpp"
#include "pipeline/parallel/mpi_comm.hpp"

namespace mixq {
namespace {

int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Whether every rank holds the same bytes as rank 0.
bool same_on_every_rank(std::vector<float> v) {
  std::vector<float> root = v;
  MPI_Bcast(root.data(), int(root.size()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  int same = std::memcmp(root.data(), v.data(), v.size() * sizeof(float)) == 0, all = 0;
  MPI_Allreduce(&same, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  return all != 0;
}

void check_layout(synth_arch arch, int tp, int ep) {
  const testing::synth_dir d(arch);  // one per process (named by pid); the same seed, the same bytes
  const auto whole = load_causal_lm(d.dir);
  std::vector<int32_t> tokens;
  for (int32_t t = 0; t < 24; ++t) tokens.push_back((t * 41 + 3) % int32_t(whole->vocab()));
  const mpi_groups groups = make_mpi_groups(tp, ep);
  const auto share = load_causal_lm(d.dir, groups.context());
  const std::vector<float> logits = share->forward(tokens);
  EXPECT_LT(testing::max_relative(logits, whole->forward(tokens)), 1e-5) << groups.layout.describe();
  const llama_grads g = share->forward_backward(tokens), want = whole->forward_backward(tokens);
  EXPECT_NEAR(g.loss, want.loss, 1e-6 * want.loss) << groups.layout.describe();
  EXPECT_TRUE(same_on_every_rank(logits)) << groups.layout.describe();
  EXPECT_TRUE(same_on_every_rank({float(g.loss)})) << groups.layout.describe();
  // the backward's sums: every whole (row-parallel, router, lm_head) output gradient equals the whole
  // model's; lm_head's, which every rank holds, is the same on all
  int whole_outputs = 0;
  for (const auto& [name, dy] : g.dy) {
    const std::vector<float>& full = want.dy.at(name);
    if (dy.size() != full.size() || dy.empty()) continue;
    EXPECT_LT(testing::max_relative(dy, full), 1e-4) << name << ", " << groups.layout.describe();
    ++whole_outputs;
  }
  EXPECT_GT(whole_outputs, 3);
  EXPECT_TRUE(same_on_every_rank(g.dy.at("lm_head"))) << groups.layout.describe();
}

TEST(MpiSharding, TensorParallelOverAllRanks) {
  if (world_size() != 2) GTEST_SKIP() << "the tiny models have 2 KV heads: tp 2 at most";
  for (synth_arch arch : {synth_arch::llama, synth_arch::qwen3_moe, synth_arch::nemotron_h})
    check_layout(arch, world_size(), 1);
}

TEST(MpiSharding, ExpertParallelOverAllRanks) {
  for (synth_arch arch : {synth_arch::mixtral, synth_arch::nemotron_h}) check_layout(arch, 1, world_size());
}

TEST(MpiSharding, TensorAndExpertParallel) {
  if (world_size() != 4) GTEST_SKIP() << "needs 4 ranks";
  for (synth_arch arch : {synth_arch::qwen3_moe, synth_arch::nemotron_h}) check_layout(arch, 2, 2);
}

TEST(MpiSharding, ALayoutThatDoesNotFitTheWorldIsRefused) {
  EXPECT_THROW((void)make_mpi_groups(world_size() + 1), std::invalid_argument);
}

}  // namespace
}  // namespace mixq

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int failed = RUN_ALL_TESTS();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);
  MPI_Finalize();
  return any ? 1 : 0;
}
