#include "policies/speed_batches.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/check.hpp"

namespace troupe {

std::vector<int64_t> proportional_shares(const std::vector<double>& speed, int64_t batch) {
  const size_t n = speed.size();
  std::vector<int64_t> share(n, 0);
  double total = 0;
  int64_t live = 0;
  for (double s : speed)
    if (s > 0) total += s, ++live;
  TROUPE_CHECK(live > 0 && batch >= live, "proportional_shares: needs a live worker and a batch of at least one "
                                          "example each");
  // One example each, then the rest by speed: floors first, the remainder to the largest
  // fractional parts.
  const int64_t rest = batch - live;
  std::vector<double> frac(n, -1);
  int64_t given = 0;
  for (size_t w = 0; w < n; ++w) {
    if (speed[w] <= 0) continue;
    const double ideal = double(rest) * speed[w] / total;
    const int64_t whole = std::min<int64_t>(rest - given, int64_t(std::floor(ideal)));
    share[w] = 1 + whole;
    given += whole;
    frac[w] = ideal - double(whole);
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return frac[a] > frac[b]; });
  for (size_t i = 0; given < rest; i = (i + 1) % n)
    if (frac[order[i]] >= 0) ++share[order[i]], ++given;
  return share;
}

speed_balancer::speed_balancer(int workers, int64_t batch, int64_t every)
    : batch_(batch), every_(every), speed_(size_t(workers), 1.0), busy_(size_t(workers), 0),
      samples_(size_t(workers), 0), live_(size_t(workers), true) {
  shares_ = proportional_shares(speed_, batch_);
}

void speed_balancer::observe(int32_t worker, double busy_s, int64_t samples) {
  if (worker < 0 || size_t(worker) >= busy_.size()) return;
  busy_[size_t(worker)] += std::max(0.0, busy_s);
  samples_[size_t(worker)] += samples;
}

void speed_balancer::leave(int32_t worker) {
  if (worker < 0 || size_t(worker) >= live_.size() || !live_[size_t(worker)]) return;
  live_[size_t(worker)] = false;
  left_ = true;
}

void speed_balancer::at_version(int64_t version) {
  if (!left_ && (every_ <= 0 || version % every_ != 0)) return;
  const bool forced = left_;
  left_ = false;
  std::vector<double> speed(speed_.size(), 0);
  for (size_t w = 0; w < speed_.size(); ++w) {
    if (busy_[w] > 0 && samples_[w] > 0) speed_[w] = double(samples_[w]) / busy_[w];
    busy_[w] = 0;
    samples_[w] = 0;
    speed[w] = live_[w] ? speed_[w] : 0;
  }
  if (std::none_of(speed.begin(), speed.end(), [](double s) { return s > 0; })) return;
  std::vector<int64_t> next = proportional_shares(speed, batch_);
  // Hysteresis: measured speeds jitter, and shares that chase the jitter make the rounds
  // uneven. Keep the shares in force unless the new ones predict a round at least
  // kMinGain shorter; after a leave the dead worker's share must move, so always adopt.
  if (forced || predicted_round_s(next, speed) <= (1 - kMinGain) * predicted_round_s(shares_, speed)) shares_ = next;
}

double predicted_round_s(const std::vector<int64_t>& shares, const std::vector<double>& speed) {
  double longest = 0;
  for (size_t w = 0; w < shares.size() && w < speed.size(); ++w)
    if (speed[w] > 0) longest = std::max(longest, double(shares[w]) / speed[w]);
  return longest;
}

}  // namespace troupe
