#include "pipeline/parallel/comm.hpp"

#include <stdexcept>

#include <fmt/format.h>

namespace mixq {

namespace {

void check_group(const comm* group, int parts, int rank, const char* name) {
  const int size = group ? group->size() : 1;
  const int at = group ? group->rank() : 0;
  if (size != parts || at != rank)
    throw std::invalid_argument(fmt::format("parallel context: the {} group has {} ranks and this is rank {}, but the "
                                            "layout says {} ranks and rank {}",
                                            name, size, at, parts, rank));
}

}  // namespace

void parallel_context::check() const {
  check_group(tp_group, layout.tp, layout.tp_rank, "tp");
  check_group(ep_group, layout.ep, layout.ep_rank, "ep");
}

void parallel_context::check_model_share(const std::string& dir) const {
  check();
  if (layout.pp > 1 || layout.dp > 1)
    throw std::invalid_argument(fmt::format("{}: a model share holds whole layers of one data-parallel replica: pp and "
                                            "dp split the work of the runtime, not the model ({})",
                                            dir, layout.describe()));
}

void parallel_context::tp_sum(std::span<float> x) const {
  if (tp_group && tp_group->size() > 1) tp_group->all_reduce_sum(x);
}

void parallel_context::ep_sum(std::span<float> x) const {
  if (ep_group && ep_group->size() > 1) ep_group->all_reduce_sum(x);
}

}  // namespace mixq
