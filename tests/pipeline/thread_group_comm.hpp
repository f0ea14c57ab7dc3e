// An in-process group of ranks, one thread each, for testing sharded models without MPI: the
// collectives meet at a barrier and every rank reduces the group's buffers in rank order, so all get
// the same bits — the contract of every comm.
#pragma once

#include <barrier>
#include <span>
#include <vector>

#include "pipeline/parallel/comm.hpp"

namespace mixq::testing {

class thread_group {
 public:
  explicit thread_group(int ranks) : buffers_(size_t(ranks)), sync_(ranks) {
    for (int r = 0; r < ranks; ++r) members_.emplace_back(*this, r);
  }
  thread_group(const thread_group&) = delete;
  comm& member(int rank) { return members_.at(size_t(rank)); }

 private:
  class endpoint final : public comm {
   public:
    endpoint(thread_group& g, int rank) : group_(g), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return int(group_.buffers_.size()); }
    void all_reduce_sum(std::span<float> x) override {
      reduce(x, [](float a, float b) { return a + b; });
    }
    void all_reduce_max(std::span<float> x) override {
      reduce(x, [](float a, float b) { return a > b ? a : b; });
    }

   private:
    template <class Op>
    void reduce(std::span<float> x, Op op) {
      group_.buffers_[size_t(rank_)] = x;
      group_.sync_.arrive_and_wait();  // every rank's buffer is posted
      std::vector<float> r(group_.buffers_[0].begin(), group_.buffers_[0].end());
      for (size_t k = 1; k < group_.buffers_.size(); ++k)
        for (size_t i = 0; i < r.size(); ++i) r[i] = op(r[i], group_.buffers_[k][i]);
      group_.sync_.arrive_and_wait();  // every rank has read every buffer
      std::copy(r.begin(), r.end(), x.begin());
    }
    thread_group& group_;
    int rank_;
  };

  std::vector<std::span<float>> buffers_;
  std::barrier<> sync_;
  std::vector<endpoint> members_;
};

}  // namespace mixq::testing
