// Collectives over the ranks of one group: tp, ep, dp (see parallel_layout). Implementations: this
// single-process one and mpi_comm (an NCCL one is to come). Every implementation reduces in rank
// order, so every rank of a run gets the same bits whatever the timing. (A sharded sum adds in
// another order than one process does: results agree with the whole model to rounding, not bit
// for bit.)
#pragma once

#include <span>
#include <string>

#include "pipeline/parallel/parallel_layout.hpp"

namespace mixq {

class comm {
 public:
  virtual ~comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // x ← the elementwise sum (max) of x over the group's ranks, added in rank order.
  virtual void all_reduce_sum(std::span<float> x) = 0;
  virtual void all_reduce_max(std::span<float> x) = 0;
};

// A group of one: every collective leaves x as it is.
class local_comm final : public comm {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(std::span<float>) override {}
  void all_reduce_max(std::span<float>) override {}
};

// What a model's blocks need to run a share of the model: the layout, and the groups whose partial
// results they combine. The default is the whole model in this process.
struct parallel_context {
  parallel_layout layout;
  comm* tp_group = nullptr;  // nullptr: no group (tp must be 1)
  comm* ep_group = nullptr;  // nullptr: no group (ep must be 1)

  // Throws std::invalid_argument unless each group's size and rank agree with the layout.
  void check() const;
  // check(), and that the layout cuts a model (a share holds whole layers of one replica: pp and dp
  // split the runtime's work, not the model); `dir` names the model in the message.
  void check_model_share(const std::string& dir) const;
  void tp_sum(std::span<float> x) const;  // all_reduce_sum over the tp group (nothing alone)
  void ep_sum(std::span<float> x) const;
};

}  // namespace mixq
