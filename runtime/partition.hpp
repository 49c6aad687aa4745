#pragma once
// Cutting a model's layer list into contiguous pieces of balanced cost.
#include <cstddef>
#include <vector>

namespace troupe {

// Splits costs[0..n) into `parts` contiguous, non-empty pieces minimising the largest
// piece's sum, and among those cuts the sum of squared pieces. Returns parts+1 boundaries (0 = b[0] < b[1] < ... < b[parts] = n).
// Throws input_error if there are fewer items than parts.
std::vector<size_t> partition_balanced(const std::vector<double>& costs, int parts);

// Placement of stage actors on device actors: each replica gets devices / replicas of
// them, and its stages take turns on those (stage s of replica r on device
// r * per + s % per, per = devices / replicas); devices = 0 means one device per stage
// actor. Replicas never share a device: each would wait in the gradient all-reduce for
// the other, queued behind it. check_placement throws input_error unless devices is 0 or
// a multiple of replicas.
int device_of(int stage, int replica, int stages, int replicas, int devices);
void check_placement(int stages, int replicas, int devices);

}  // namespace troupe
