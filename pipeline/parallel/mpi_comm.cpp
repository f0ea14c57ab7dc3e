#include "pipeline/parallel/mpi_comm.hpp"

#include <limits>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "pipeline/parallel/mpi_check.hpp"

namespace mixq {

mpi_comm::mpi_comm(MPI_Comm c) : comm_(c) {
  try {
    // errors as return codes on communicators made for this object; the world keeps its handler
    if (comm_ != MPI_COMM_WORLD) check_mpi(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check_mpi(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  } catch (...) {
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
    throw;
  }
}

mpi_comm::~mpi_comm() {
  int finalized = 0;
  MPI_Finalized(&finalized);  // freeing after MPI_Finalize would be an error
  if (!finalized && comm_ != MPI_COMM_WORLD && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

template <class Op>
void mpi_comm::all_reduce(std::span<float> x, Op op) {
  if (size_ == 1 || x.empty()) return;
  if (x.size() > size_t(std::numeric_limits<int>::max()))
    throw std::invalid_argument(fmt::format("all-reduce of {} floats: more than one MPI message holds", x.size()));
  std::vector<float> all(x.size() * size_t(size_));
  check_mpi(MPI_Allgather(x.data(), int(x.size()), MPI_FLOAT, all.data(), int(x.size()), MPI_FLOAT, comm_),
            "MPI_Allgather");
  for (size_t i = 0; i < x.size(); ++i) {
    float r = all[i];
    for (size_t k = 1; k < size_t(size_); ++k) r = op(r, all[k * x.size() + i]);
    x[i] = r;
  }
}

void mpi_comm::all_reduce_sum(std::span<float> x) {
  all_reduce(x, [](float a, float b) { return a + b; });
}

void mpi_comm::all_reduce_max(std::span<float> x) {
  all_reduce(x, [](float a, float b) { return a > b ? a : b; });
}

mpi_groups make_mpi_groups(int tp, int ep, int pp, int dp) {
  int rank = 0, world = 1;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &world), "MPI_Comm_size");
  const int needed = parallel_layout::of_rank(0, tp, ep, pp, dp).world();  // validates the sizes
  if (needed != world)
    throw std::invalid_argument(fmt::format("parallel layout tp {} x ep {} x pp {} x dp {} needs {} ranks; mpirun "
                                            "started {}",
                                            tp, ep, pp, dp, needed, world));
  mpi_groups g;
  g.layout = parallel_layout::of_rank(rank, tp, ep, pp, dp);
  const parallel_layout& l = g.layout;
  // a tp group: the ranks that differ in tp_rank only (consecutive); an ep group: in ep_rank only
  MPI_Comm tp_comm = MPI_COMM_NULL, ep_comm = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split(MPI_COMM_WORLD, (l.dp_rank * pp + l.pp_rank) * ep + l.ep_rank, l.tp_rank, &tp_comm),
            "MPI_Comm_split (tp)");
  g.tp = std::make_unique<mpi_comm>(tp_comm);
  check_mpi(MPI_Comm_split(MPI_COMM_WORLD, (l.dp_rank * pp + l.pp_rank) * tp + l.tp_rank, l.ep_rank, &ep_comm),
            "MPI_Comm_split (ep)");
  g.ep = std::make_unique<mpi_comm>(ep_comm);
  return g;
}

}  // namespace mixq
