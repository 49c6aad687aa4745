// K-async SGD (Dutta et al. 2018): the shard waits for any K gradients, whatever version
// each was computed from, and applies their average; workers never wait for each other.
// K = 1 is Downpour; K = n with fresh gradients behaves like sync without the barrier.
#include <algorithm>

#include "policies/update_rules.hpp"

namespace troupe {

update_plan k_async_rule::decide(const std::vector<push_info>& pending, int64_t, const worker_view& w) const {
  update_plan plan;
  const size_t need = size_t(std::max(1, std::min(k_, w.live_count())));
  if (pending.empty() || pending.size() < need) return plan;
  for (size_t i = 0; i < need; ++i) plan.take.push_back(i);
  plan.weight = sample_weights(pending, plan.take);
  return plan;
}

}  // namespace troupe
