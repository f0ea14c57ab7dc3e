// How one rank's share of a model is cut, Megatron style. Tensor parallel (tp) splits attention
// heads and MLP columns: q / k / v and gate / up by output rows (column-parallel), o and down by
// input columns (row-parallel: the tp group sums their outputs). Expert parallel (ep) places whole
// routed experts (the ep group sums the MoE output). Pipeline parallel (pp) gives each stage a
// contiguous run of layers; data parallel (dp) splits the calibration sequences.
#pragma once

#include <cstdint>
#include <string>

namespace mixq {

// The half-open index range [begin, end).
struct index_range {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
  bool contains(int64_t i) const { return i >= begin && i < end; }
  bool operator==(const index_range&) const = default;
};

struct parallel_layout {
  int tp = 1, ep = 1, pp = 1, dp = 1;
  int tp_rank = 0, ep_rank = 0, pp_rank = 0, dp_rank = 0;

  // Rank `rank` of tp·ep·pp·dp ranks, numbered tp fastest, then ep, pp, dp (so a tp group is
  // consecutive ranks, as on one node). Throws std::invalid_argument naming the bad value.
  static parallel_layout of_rank(int rank, int tp, int ep = 1, int pp = 1, int dp = 1);

  int world() const { return tp * ep * pp * dp; }
  bool single() const { return world() == 1; }

  // This rank's tp share of n items (attention heads, KV heads, MLP columns): an equal split, or a
  // std::invalid_argument saying that tp does not divide the n `what` (e.g. "8 KV heads").
  index_range tensor_share(int64_t n, const std::string& what) const;
  // This rank's ep share of n routed experts (equal split; error as above).
  index_range expert_share(int64_t n) const;
  // This stage's layers of n: contiguous, as even as possible, the first stages taking the extra.
  index_range layer_share(int64_t n) const;
  // This rank's dp share of n sequences: contiguous, as even as possible.
  index_range data_share(int64_t n) const;

  std::string describe() const;  // "tp 2 (rank 1), ep 1, pp 1, dp 1"
};

}  // namespace mixq
