// Downpour SGD (Dean et al. 2012), fully asynchronous: every gradient is applied by
// itself the moment it arrives, however stale; a worker pulls whatever is current.
#include "policies/update_rules.hpp"

namespace troupe {

update_plan apply_first_alone(const std::vector<push_info>& pending) {
  update_plan plan;
  if (pending.empty()) return plan;
  plan.take = {0};
  plan.weight = {1.0};
  return plan;
}

update_plan downpour_rule::decide(const std::vector<push_info>& pending, int64_t, const worker_view&) const {
  return apply_first_alone(pending);
}

}  // namespace troupe
