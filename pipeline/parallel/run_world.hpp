// The processes of one mixq run: MPI's world when a launcher started this process (mpirun, srun),
// else this process alone, and the few collectives a data-parallel run's stages need. Each process
// takes every size()-th item of a list (sequences, weights); what they learn is combined by max and
// integer sums, which no order changes, or gathered and added in item order, so a run's bytes do
// not depend on how many processes it had.
//
// Errors: work that may fail on some processes runs through stage(); afterwards every process knows
// whether all succeeded, and where one failed, every process throws run_failed naming the first
// failed rank (or none, where all failed alike) and its message. A collective is only ever reached
// by all processes or by none, so such a failure never leaves the others waiting; an error outside
// a stage is a defect, and main() aborts the job on it (MPI_Abort) rather than let it hang.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace mixq {

// A failure of one of the processes, raised on every one of them.
class run_failed : public std::runtime_error {
 public:
  run_failed(int rank, const std::string& what) : std::runtime_error(what), rank_(rank) {}
  // The first process that failed; -1 where every process failed alike (the same message).
  int rank() const { return rank_; }

 private:
  int rank_;
};

class run_world {
 public:
  // Once, first thing in main: initializes MPI when the environment says a launcher started this
  // process (Open MPI's mpirun, PMIx or PMI: srun --mpi=pmix|pmi2, MPICH's hydra). MPI is finalized
  // at exit.
  static void start(int& argc, char**& argv);
  // The world start() found (this process alone before it, or without a launcher).
  static const run_world& get();
  // A world of one process, whatever started this one (library use, tests).
  static const run_world& alone();
  // Where a launcher started this process: the launcher's name ("mpirun", "srun", ...), else "".
  static std::string launcher();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }
  // Data parallel: item i belongs to process i mod size().
  bool takes(int64_t item) const { return item % size_ == rank_; }

  // Runs work, then agrees with every process on the outcome (see the top of this file). Alone it
  // only runs work: its exceptions pass through as they are.
  void stage(const std::function<void()>& work) const;
  // The root's value of a condition, on every process (what one file system shows, decided once).
  bool roots(bool value) const;
  // Elementwise over every process; the same result on each.
  void max(std::span<float> x) const;
  void sum(std::span<int64_t> x) const;
  // Every process's bytes, in rank order, on every process.
  std::vector<std::string> all_gather(const std::string& mine) const;
  // Every item's bytes on every process, in item order: each process makes its own items (made(i))
  // and at(i, bytes) runs everywhere for every i < n. (An item's bytes are one MPI message: at most
  // 2^31 - 1.)
  void share_items(int64_t n, const std::function<std::string(int64_t)>& made,
                   const std::function<void(int64_t, std::string)>& at) const;
  // Stops every process of the run at once (an error outside stage()); exits alone.
  [[noreturn]] void abort(int code) const;

 private:
  run_world(int rank, int size) : rank_(rank), size_(size) {}
  int rank_, size_;
};

}  // namespace mixq
