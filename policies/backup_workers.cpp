// Synchronous SGD with b backup workers (Chen et al. 2016, "Revisiting distributed
// synchronous SGD"): of n live workers, the first n - b gradients of the current version
// to arrive make the update; the b that come later are dropped when they arrive, so one
// slow worker costs nothing but its own work. Pulls wait for the round, as in sync. A
// worker that finishes after pushing to a round still counts in it; one that has left
// (finished or failed) shrinks the rounds after.
#include <algorithm>

#include "policies/update_rules.hpp"

namespace troupe {

update_plan backup_workers_rule::decide(const std::vector<push_info>& pending, int64_t version,
                                        const worker_view& w) const {
  update_plan plan;
  for (size_t i = 0; i < pending.size(); ++i)
    if (pending[i].version < version) plan.drop.push_back(i);
  if (!plan.drop.empty()) return plan;
  // The round's workers: the live ones, and any that pushed to it and then finished.
  int round = w.live_count();
  for (const push_info& p : pending)
    if (!w.live[size_t(p.worker)]) ++round;
  const size_t need = size_t(std::max(1, round - backup_));
  if (pending.size() < need) return plan;
  for (size_t i = 0; i < need; ++i) plan.take.push_back(i);  // arrival order: the fastest
  std::sort(plan.take.begin(), plan.take.end(),
            [&](size_t a, size_t b) { return pending[a].worker < pending[b].worker; });
  plan.weight = sample_weights(pending, plan.take);
  return plan;
}

bool backup_workers_rule::may_serve(const pull_info& pull, int64_t version, const worker_view&) const {
  return version > pull.after_version;
}

}  // namespace troupe
