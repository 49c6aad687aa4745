#pragma once
// Speed-proportional batch sizes (policy.balance_every, with the sync rule): every few
// steps the global batch is re-divided so that each live worker's share is proportional
// to its measured speed (examples per busy second: compute, emulated time included, pull
// waits not), and a slow worker stops holding every round back. The global batch and the
// sync rule's sample-weighted mean are unchanged, so the update is still the
// single-process run's. Shard 0 keeps the balancer and hands each worker the shares in
// force for the version it pulled; the balancer only decides.
#include <cstdint>
#include <vector>

namespace troupe {

// Worker w's share of `batch` examples, proportional to speed[w]: every worker with
// speed > 0 gets at least 1, a worker with speed <= 0 (gone) gets 0, and the shares sum
// to `batch` (largest remainder; ties to the lower index). Needs batch >= the number of
// workers with speed > 0, and at least one.
std::vector<int64_t> proportional_shares(const std::vector<double>& speed, int64_t batch);

// The round time `shares` predict: the longest share / speed among workers with speed > 0.
double predicted_round_s(const std::vector<int64_t>& shares, const std::vector<double>& speed);

class speed_balancer {
 public:
  speed_balancer(int workers, int64_t batch, int64_t every);
  // A worker's step: `samples` examples in `busy_s` seconds.
  void observe(int32_t worker, double busy_s, int64_t samples);
  void leave(int32_t worker);
  // Called when the shard reaches `version`; every `every` versions it re-divides the
  // batch from the speeds measured since the last time, and adopts the new shares only if
  // they predict a round at least kMinGain shorter than the shares in force do (measured
  // speeds jitter by a few per cent; chasing that makes rounds uneven). After a worker
  // has left it re-divides at once and always adopts.
  void at_version(int64_t version);
  static constexpr double kMinGain = 0.05;
  const std::vector<int64_t>& shares() const { return shares_; }

 private:
  int64_t batch_, every_;
  std::vector<int64_t> shares_;
  std::vector<double> speed_, busy_;  // speed: last measured; busy and samples: this window
  std::vector<int64_t> samples_;
  std::vector<bool> live_;
  bool left_ = false;
};

}  // namespace troupe
