// Stale-synchronous parallel with bound s (Ho et al. 2013): gradients are applied as they
// arrive, but a worker about to start step c gets its parameters only once every live
// worker has pushed at least c - s gradients, so no worker runs more than s steps ahead
// of the slowest. s = 0 is a barrier per step (BSP); a large s is Downpour.
#include "policies/update_rules.hpp"

namespace troupe {

update_plan ssp_rule::decide(const std::vector<push_info>& pending, int64_t, const worker_view&) const {
  return apply_first_alone(pending);
}

bool ssp_rule::may_serve(const pull_info& pull, int64_t, const worker_view& w) const {
  const int64_t slowest = w.min_live_clock();
  return slowest == INT64_MAX || pull.clock <= slowest + bound_;
}

}  // namespace troupe
