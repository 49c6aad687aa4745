// Staleness-aware asynchronous SGD (Zhang et al. 2016): as Downpour, but a gradient of
// staleness tau >= 1 is applied with learning rate lr / tau, so old gradients move the
// parameters less. A fresh gradient (tau = 0) takes the full rate.
#include <algorithm>

#include "policies/update_rules.hpp"

namespace troupe {

update_plan staleness_lr_rule::decide(const std::vector<push_info>& pending, int64_t version,
                                      const worker_view&) const {
  update_plan plan = apply_first_alone(pending);
  if (!plan.take.empty()) plan.lr_scale = 1.0 / double(std::max<int64_t>(1, version - pending[0].version));
  return plan;
}

}  // namespace troupe
