// Delay-compensated ASGD (Zheng et al. 2017): as Downpour, but a gradient g computed at
// parameters w_pulled is corrected to the current w by the first-order term of its Taylor
// expansion, with the Hessian approximated by lambda * g * g (element-wise):
//   g' = g + lambda * g * g * (w - w_pulled).
// The shard keeps each worker's w_pulled (one copy of its slice per worker) to do this.
// DC-ASGD-a (policy.dc_adaptive, the paper's adaptive variant): lambda is divided
// element-wise by sqrt(ms), ms a moving mean of g*g over the applied gradients (decay
// 0.95, kept by the shard), which makes the term's scale independent of the gradients':
// about lambda |g| (w - w_pulled).
#include "policies/update_rules.hpp"

namespace troupe {

update_plan dc_asgd_rule::decide(const std::vector<push_info>& pending, int64_t, const worker_view&) const {
  update_plan plan = apply_first_alone(pending);
  plan.dc_lambda = lambda_;
  plan.dc_adaptive = adaptive_;
  return plan;
}

}  // namespace troupe
