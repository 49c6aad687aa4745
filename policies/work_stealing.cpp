#include "policies/work_stealing.hpp"

#include "runtime/check.hpp"

namespace troupe {

std::deque<int64_t> own_micro_batches(int32_t worker, int32_t workers, int32_t micro_batches) {
  TROUPE_CHECK(workers > 0 && worker >= 0 && worker < workers && micro_batches >= 0,
               "own_micro_batches: needs 0 <= worker < workers and micro_batches >= 0");
  std::deque<int64_t> q;
  const int64_t M = micro_batches;
  for (int64_t j = int64_t(worker) * M / workers; j < int64_t(worker + 1) * M / workers; ++j) q.push_back(j);
  return q;
}

std::vector<int32_t> victim_order(int32_t thief, int32_t workers) {
  std::vector<int32_t> order;
  for (int32_t k = 1; k < workers; ++k) order.push_back((thief + k) % workers);
  return order;
}

size_t steal_count(size_t left) { return (left + 1) / 2; }

std::vector<int64_t> give_away(std::deque<int64_t>& queue) {
  const size_t n = steal_count(queue.size());
  std::vector<int64_t> given(queue.end() - std::ptrdiff_t(n), queue.end());
  queue.resize(queue.size() - n);
  return given;
}

}  // namespace troupe
