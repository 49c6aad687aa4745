#include "runtime/stage_compute.hpp"

#include <thread>

namespace troupe {

namespace {
// Pure sleep: p emulated stages must not compete for 2 cores. The wake-up overshoot
// (tens of microseconds) counts as busy time, as the stage actor measures what it waited.
void wait_until(std::chrono::steady_clock::time_point until) { std::this_thread::sleep_until(until); }
}  // namespace

tensor emulated_compute::forward(int, int64_t, int, const tensor& x) {
  wait_until(std::chrono::steady_clock::now() + t_fwd_);
  return x;  // the handle moves on; the emulation carries no data
}

tensor emulated_compute::backward(int, int64_t, int, const tensor& dy) {
  wait_until(std::chrono::steady_clock::now() + t_bwd_ + t_wgt_);
  return dy;
}

tensor emulated_compute::backward_input(int, int64_t, int, const tensor& dy) {
  wait_until(std::chrono::steady_clock::now() + t_bwd_);
  return dy;
}

void emulated_compute::backward_weight(int, int64_t, int) { wait_until(std::chrono::steady_clock::now() + t_wgt_); }

}  // namespace troupe
