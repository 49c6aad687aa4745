#pragma once
// Straggler and fault injection for experiments (`policy.stragglers` in the job spec):
// per worker, a constant slow-down, an exponential extra delay, an occasional spike, and a
// failure at a given step. Every draw is a pure function of (seed, worker, step), so a run
// repeats whatever order the workers happen to ask in. This decides how long a step
// should take; the worker actor does the waiting.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace troupe {

namespace proto {
class PolicySpec;
}

struct straggler_profile {
  double slowdown = 1;      // every step takes slowdown x the nominal time
  double exp_mean = 0;      // plus an exponential extra delay of this mean, in nominal steps
  double spike_factor = 1;  // with probability spike_prob a step takes spike_factor x instead of 1x
  double spike_prob = 0;
  int64_t fail_at = -1;     // the worker fails once this step has begun (pulled), before its compute (-1: never)
};

class straggler_injector {
 public:
  straggler_injector(std::vector<straggler_profile> per_worker, uint64_t seed);
  // Profiles of `workers` workers from the spec (workers it does not name run at 1x).
  straggler_injector(const proto::PolicySpec& spec, int workers, uint64_t seed);

  // Step `step` of worker w takes factor(w, step) x the nominal step time:
  // slowdown * (spike_factor with probability spike_prob, else 1) + Exp(exp_mean).
  double factor(int worker, int64_t step) const;
  bool fails_at(int worker, int64_t step) const;
  const straggler_profile& profile(int worker) const { return profiles_.at(size_t(worker)); }
  int workers() const { return int(profiles_.size()); }

 private:
  std::vector<straggler_profile> profiles_;
  uint64_t seed_;
};

}  // namespace troupe
