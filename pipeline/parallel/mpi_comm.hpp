// comm over an MPI communicator, for CPU tensors. MPI_Allreduce's summation order depends on the
// algorithm Open MPI picks for the message size and rank count, so the reductions here gather every
// rank's buffer and combine them in rank order on each rank: every rank, every run, the same bits.
#pragma once

#include <mpi.h>

#include <memory>

#include "pipeline/parallel/comm.hpp"

namespace mixq {

class mpi_comm final : public comm {
 public:
  // Takes ownership of a communicator made for it (MPI_Comm_split) and has it return errors, which
  // the collectives throw as std::runtime_error; MPI_COMM_WORLD is used as it is and never freed.
  explicit mpi_comm(MPI_Comm c);
  ~mpi_comm() override;
  mpi_comm(const mpi_comm&) = delete;
  mpi_comm& operator=(const mpi_comm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(std::span<float> x) override;
  void all_reduce_max(std::span<float> x) override;

 private:
  template <class Op>
  void all_reduce(std::span<float> x, Op op);
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

// This MPI_COMM_WORLD rank's tp and ep groups under a layout whose world is MPI's (ranks numbered as
// parallel_layout::of_rank numbers them), and the parallel_context a model loads its share with.
struct mpi_groups {
  parallel_layout layout;
  std::unique_ptr<mpi_comm> tp, ep;
  parallel_context context() const { return {layout, tp.get(), ep.get()}; }
};

// Collective over MPI_COMM_WORLD; throws std::invalid_argument when tp·ep·pp·dp is not its size.
mpi_groups make_mpi_groups(int tp, int ep = 1, int pp = 1, int dp = 1);

}  // namespace mixq
