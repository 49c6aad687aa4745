#include "policies/stragglers.hpp"

#include <cmath>

#include "runtime/check.hpp"
#include "runtime/proto/job.pb.h"
#include "runtime/rng.hpp"

namespace troupe {

straggler_injector::straggler_injector(std::vector<straggler_profile> per_worker, uint64_t seed)
    : profiles_(std::move(per_worker)), seed_(seed) {}

straggler_injector::straggler_injector(const proto::PolicySpec& spec, int workers, uint64_t seed)
    : profiles_(size_t(workers)), seed_(seed) {
  for (const proto::StragglerSpec& s : spec.stragglers()) {
    if (s.worker() >= uint32_t(workers))
      throw input_error("policy.stragglers: worker " + std::to_string(s.worker()) + " does not exist (policy.workers is " +
                        std::to_string(workers) + ")");
    straggler_profile& p = profiles_[s.worker()];
    p.slowdown = s.has_slowdown() ? s.slowdown() : 1.0;
    p.exp_mean = s.exp_delay();
    p.spike_factor = s.has_spike_factor() ? s.spike_factor() : 1.0;
    p.spike_prob = s.spike_prob();
    p.fail_at = s.has_fail_at_step() ? int64_t(s.fail_at_step()) : -1;
  }
}

double straggler_injector::factor(int worker, int64_t step) const {
  const straggler_profile& p = profile(worker);
  // One fresh generator per (worker, step): the draws do not depend on call order.
  rng r(seed_ ^ (uint64_t(worker) + 1) * 0x9e3779b97f4a7c15ull ^ (uint64_t(step) + 1) * 0xc2b2ae3d27d4eb4full);
  const double u_spike = r.uniform(), u_exp = r.uniform();
  double f = p.slowdown * (u_spike < p.spike_prob ? p.spike_factor : 1.0);
  if (p.exp_mean > 0) f += -p.exp_mean * std::log(1.0 - u_exp);
  return f;
}

bool straggler_injector::fails_at(int worker, int64_t step) const {
  return profile(worker).fail_at >= 0 && step >= profile(worker).fail_at;
}

}  // namespace troupe
