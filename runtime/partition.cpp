#include "runtime/partition.hpp"

#include <algorithm>
#include <limits>
#include <string>

#include "runtime/check.hpp"

namespace troupe {

std::vector<size_t> partition_balanced(const std::vector<double>& costs, int parts) {
  const size_t n = costs.size();
  if (parts < 1 || size_t(parts) > n)
    throw input_error("cannot cut " + std::to_string(n) + " layers into " + std::to_string(parts) +
                      " pipeline pieces: expected between 1 and " + std::to_string(n) + " pieces");
  std::vector<double> prefix(n + 1, 0);
  for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + costs[i];
  // best[k][i]: for the first i items in k pieces, the smallest largest piece and, among
  // cuts that reach it, the smallest sum of squared pieces (so the pieces that are not the
  // largest are balanced too, rather than one left nearly empty).
  struct cost {
    double largest = std::numeric_limits<double>::infinity(), squares = std::numeric_limits<double>::infinity();
    bool operator<(const cost& o) const { return largest < o.largest || (largest == o.largest && squares < o.squares); }
  };
  std::vector<std::vector<cost>> best(size_t(parts) + 1, std::vector<cost>(n + 1));
  std::vector<std::vector<size_t>> cut(size_t(parts) + 1, std::vector<size_t>(n + 1, 0));
  best[0][0] = {0, 0};
  for (size_t k = 1; k <= size_t(parts); ++k)
    for (size_t i = k; i <= n; ++i)
      for (size_t j = k - 1; j < i; ++j) {
        double piece = prefix[i] - prefix[j];
        cost c{std::max(best[k - 1][j].largest, piece), best[k - 1][j].squares + piece * piece};
        if (c < best[k][i]) best[k][i] = c, cut[k][i] = j;
      }
  std::vector<size_t> bounds(size_t(parts) + 1, n);
  for (size_t k = size_t(parts); k > 0; --k) bounds[k - 1] = cut[k][bounds[k]];
  return bounds;
}

int device_of(int stage, int replica, int stages, int replicas, int devices) {
  if (devices <= 0) return replica * stages + stage;
  const int per = devices / replicas;
  return replica * per + stage % per;
}

void check_placement(int, int replicas, int devices) {
  if (devices > 0 && devices % replicas != 0)
    throw input_error("parallel.devices: invalid value " + std::to_string(devices) +
                      ": expected 0 (one device per stage actor) or a multiple of parallel.replicas (" +
                      std::to_string(replicas) + "), so that replicas never share a device");
}

}  // namespace troupe
