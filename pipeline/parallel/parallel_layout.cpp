#include "pipeline/parallel/parallel_layout.hpp"

#include <limits>
#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

namespace {

index_range even_share(int64_t n, int parts, int index) {
  const int64_t base = n / parts, extra = n % parts;
  const int64_t begin = index * base + std::min<int64_t>(index, extra);
  return {begin, begin + base + (index < extra ? 1 : 0)};
}

index_range exact_share(int64_t n, int parts, int index, const std::string& what, const char* dim) {
  if (n % parts != 0)
    throw std::invalid_argument(fmt::format("{} {} does not divide the {} {}: each rank needs an equal share", dim,
                                            parts, n, what));
  return even_share(n, parts, index);
}

}  // namespace

parallel_layout parallel_layout::of_rank(int rank, int tp, int ep, int pp, int dp) {
  for (const auto& [name, v] : {std::pair{"tp", tp}, {"ep", ep}, {"pp", pp}, {"dp", dp}})
    if (v < 1) throw std::invalid_argument(fmt::format("parallel layout: {} must be at least 1, got {}", name, v));
  if (int64_t(tp) * ep * pp * dp > std::numeric_limits<int>::max())
    throw std::invalid_argument(fmt::format("parallel layout: tp {} x ep {} x pp {} x dp {} ranks is too many", tp, ep,
                                            pp, dp));
  parallel_layout l{tp, ep, pp, dp, 0, 0, 0, 0};
  if (rank < 0 || rank >= l.world())
    throw std::invalid_argument(fmt::format("parallel layout: rank {} is outside 0..{} (tp {} x ep {} x pp {} x dp {})",
                                            rank, l.world() - 1, tp, ep, pp, dp));
  l.tp_rank = rank % tp;
  l.ep_rank = rank / tp % ep;
  l.pp_rank = rank / (tp * ep) % pp;
  l.dp_rank = rank / (tp * ep * pp);
  return l;
}

index_range parallel_layout::tensor_share(int64_t n, const std::string& what) const {
  return exact_share(n, tp, tp_rank, what, "tp");
}

index_range parallel_layout::expert_share(int64_t n) const { return exact_share(n, ep, ep_rank, "routed experts", "ep"); }

index_range parallel_layout::layer_share(int64_t n) const {
  if (n < pp) throw std::invalid_argument(fmt::format("pp {} is more than the {} layers", pp, n));
  return even_share(n, pp, pp_rank);
}

index_range parallel_layout::data_share(int64_t n) const { return even_share(n, dp, dp_rank); }

std::string parallel_layout::describe() const {
  return fmt::format("tp {} (rank {}), ep {} (rank {}), pp {} (stage {}), dp {} (rank {})", tp, tp_rank, ep, ep_rank,
                     pp, pp_rank, dp, dp_rank);
}

}  // namespace mixq
