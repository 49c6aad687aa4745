// Synchronous SGD through parameter shards: an update waits for the gradient of every
// live worker at the current version and averages them (weights by samples, summed in
// worker order so the result does not depend on arrival order). A worker's next pull waits
// for that update. Same arithmetic as the all-reduce path; a worker that fails leaves the
// quorum instead of stalling it.
#include <algorithm>

#include "policies/update_rules.hpp"

namespace troupe {

update_plan sync_rule::decide(const std::vector<push_info>& pending, int64_t version, const worker_view& w) const {
  update_plan plan;
  for (size_t i = 0; i < pending.size(); ++i)
    if (pending[i].version < version) plan.drop.push_back(i);
  if (!plan.drop.empty() || pending.empty()) return plan;
  std::vector<bool> pushed(w.clock.size(), false);
  for (const push_info& p : pending) pushed[size_t(p.worker)] = true;
  for (size_t k = 0; k < w.live.size(); ++k)
    if (w.live[k] && !pushed[k]) return plan;
  for (size_t i = 0; i < pending.size(); ++i) plan.take.push_back(i);
  std::sort(plan.take.begin(), plan.take.end(),
            [&](size_t a, size_t b) { return pending[a].worker < pending[b].worker; });
  plan.weight = sample_weights(pending, plan.take);
  return plan;
}

bool sync_rule::may_serve(const pull_info& pull, int64_t version, const worker_view&) const {
  return version > pull.after_version;
}

}  // namespace troupe
