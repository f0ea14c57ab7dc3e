#include "pipeline/parallel/run_world.hpp"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>

#include "pipeline/parallel/mpi_check.hpp"

namespace mixq {

namespace {

run_world* g_world = nullptr;

int message_count(size_t n, const char* what) {
  if (n > size_t(std::numeric_limits<int>::max()))
    throw std::invalid_argument(fmt::format("{} of {} items: more than one MPI message holds", what, n));
  return int(n);
}

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

}  // namespace

std::string run_world::launcher() {
  if (std::getenv("OMPI_COMM_WORLD_SIZE")) return "mpirun";
  if (std::getenv("SLURM_STEP_ID") && (std::getenv("PMIX_RANK") || std::getenv("PMI_RANK"))) return "srun";
  if (std::getenv("PMIX_RANK") || std::getenv("PMI_RANK")) return "a PMI launcher";
  return "";
}

void run_world::start(int& argc, char**& argv) {
  if (g_world) return;
  // Tasks a launcher says it started (srun without an MPI plugin sets no PMI variables).
  int64_t tasks = 1;
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"})
    if (const char* v = std::getenv(name)) tasks = std::max<int64_t>(tasks, std::atoll(v));
  if (launcher().empty()) {
    if (tasks > 1)
      throw std::runtime_error(fmt::format("srun started {} tasks without MPI: they would each run alone and write the "
                                           "same output; run srun with --mpi=pmix (as launch/slurm/quantize.sbatch "
                                           "does), or one task",
                                           tasks));
    return;
  }
  int provided = 0;
  check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  std::atexit(finalize_mpi);
  if (provided < MPI_THREAD_FUNNELED)
    throw std::runtime_error("the MPI library does not allow threads beside MPI calls (MPI_THREAD_FUNNELED)");
  int rank = 0, size = 1;
  check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank), "MPI_Comm_rank");
  check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size), "MPI_Comm_size");
  if (size != tasks && tasks > 1)
    throw std::runtime_error(fmt::format("{} started {} tasks, but MPI sees {} process(es): this mixq's MPI (Open MPI) "
                                         "is not the launcher's",
                                         launcher(), tasks, size));
  static run_world world(rank, size);
  g_world = &world;
}

const run_world& run_world::get() { return g_world ? *g_world : alone(); }

const run_world& run_world::alone() {
  static const run_world one(0, 1);
  return one;
}

void run_world::stage(const std::function<void()>& work) const {
  if (size_ == 1) return work();
  std::string failure;
  bool failed = false;
  try {
    work();
  } catch (const run_failed&) {
    throw;  // agreed already, by every process
  } catch (const std::exception& e) {
    failed = true;
    failure = e.what();
  } catch (...) {
    failed = true;
    failure = "an unknown error";
  }
  int any = failed ? 1 : 0;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  if (!any) return;
  const std::vector<std::string> all = all_gather(failed ? "!" + failure : std::string());
  const bool alike = std::all_of(all.begin(), all.end(), [&](const std::string& m) { return m == all[0]; });
  for (int r = 0; r < size_; ++r)
    if (!all[size_t(r)].empty()) throw run_failed(alike ? -1 : r, all[size_t(r)].substr(1));
}

bool run_world::roots(bool value) const {
  if (size_ == 1) return value;
  int v = value ? 1 : 0;
  check_mpi(MPI_Bcast(&v, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
  return v != 0;
}

void run_world::max(std::span<float> x) const {
  if (size_ == 1 || x.empty()) return;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, x.data(), message_count(x.size(), "max"), MPI_FLOAT, MPI_MAX, MPI_COMM_WORLD),
            "MPI_Allreduce");
}

void run_world::sum(std::span<int64_t> x) const {
  if (size_ == 1 || x.empty()) return;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, x.data(), message_count(x.size(), "sum"), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD),
            "MPI_Allreduce");
}

std::vector<std::string> run_world::all_gather(const std::string& mine) const {
  if (size_ == 1) return {mine};
  // (sizes first, as int64, so that every process finds a message too large alike)
  const int64_t n = int64_t(mine.size());
  std::vector<int64_t> sizes(static_cast<size_t>(size_));
  check_mpi(MPI_Allgather(&n, 1, MPI_INT64_T, sizes.data(), 1, MPI_INT64_T, MPI_COMM_WORLD), "MPI_Allgather");
  std::vector<int> counts(static_cast<size_t>(size_)), offsets(static_cast<size_t>(size_));
  size_t total = 0;
  for (int r = 0; r < size_; ++r) {
    counts[size_t(r)] = message_count(size_t(sizes[size_t(r)]), "gather");
    offsets[size_t(r)] = message_count(total, "gather");
    total += size_t(sizes[size_t(r)]);
  }
  message_count(total, "gather");
  std::string all(total, '\0');
  check_mpi(MPI_Allgatherv(mine.data(), int(n), MPI_CHAR, all.data(), counts.data(), offsets.data(), MPI_CHAR,
                           MPI_COMM_WORLD),
            "MPI_Allgatherv");
  std::vector<std::string> out;
  for (int r = 0; r < size_; ++r) out.push_back(all.substr(size_t(offsets[size_t(r)]), size_t(counts[size_t(r)])));
  return out;
}

void run_world::share_items(int64_t n, const std::function<std::string(int64_t)>& made,
                            const std::function<void(int64_t, std::string)>& at) const {
  if (size_ == 1) {
    for (int64_t i = 0; i < n; ++i) at(i, made(i));
    return;
  }
  // A failure making an item is announced in place of its length (-1, then the message), so every
  // process stops at that item; a failure taking one is kept until every item has passed.
  std::string failure;
  for (int64_t i = 0; i < n; ++i) {
    const int owner = int(i % size_);
    std::string bytes;
    int64_t length = 0;
    if (owner == rank_) {
      try {
        bytes = made(i);
        length = int64_t(bytes.size());
        message_count(bytes.size(), "item");
      } catch (const std::exception& e) {
        bytes = e.what();
        length = -1;
      }
    }
    check_mpi(MPI_Bcast(&length, 1, MPI_INT64_T, owner, MPI_COMM_WORLD), "MPI_Bcast");
    if (length < 0) {
      int64_t size = int64_t(bytes.size());
      check_mpi(MPI_Bcast(&size, 1, MPI_INT64_T, owner, MPI_COMM_WORLD), "MPI_Bcast");
      bytes.resize(size_t(size));
      check_mpi(MPI_Bcast(bytes.data(), int(size), MPI_CHAR, owner, MPI_COMM_WORLD), "MPI_Bcast");
      throw run_failed(owner, bytes);
    }
    bytes.resize(size_t(length));
    check_mpi(MPI_Bcast(bytes.data(), int(length), MPI_CHAR, owner, MPI_COMM_WORLD), "MPI_Bcast");
    if (!failure.empty()) continue;
    try {
      at(i, std::move(bytes));
    } catch (const std::exception& e) {
      failure = e.what();
    }
  }
  stage([&] {
    if (!failure.empty()) throw std::runtime_error(failure);
  });
}

void run_world::abort(int code) const {
  if (size_ > 1) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace mixq
