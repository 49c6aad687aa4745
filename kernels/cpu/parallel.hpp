#pragma once
// When an element-wise loop is worth an OpenMP parallel region. Below this many elements
// the fork/join and wake-up of the second thread cost more than the loop (measured on the
// MLP: libgomp barriers and task switches were ~28% of a 128-sample step).
#include <cstdint>

namespace troupe::kernels {

constexpr int64_t kParallelMinElements = int64_t(1) << 16;

}  // namespace troupe::kernels
