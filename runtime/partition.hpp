#pragma once
// Cutting a model's layer list into contiguous pieces of balanced cost.
#include <cstddef>
#include <vector>

namespace troupe {

// Splits costs[0..n) into `parts` contiguous, non-empty pieces minimising the largest
// piece's sum, and among those cuts the sum of squared pieces. Returns parts+1 boundaries (0 = b[0] < b[1] < ... < b[parts] = n).
// Throws input_error if there are fewer items than parts.
std::vector<size_t> partition_balanced(const std::vector<double>& costs, int parts);

}  // namespace troupe
