#include <doctest/doctest.h>

#include "runtime/check.hpp"
#include "runtime/partition.hpp"

using namespace troupe;

TEST_CASE("partition: contiguous pieces with the smallest largest piece, the rest balanced") {
  CHECK(partition_balanced({1, 1, 1, 1}, 2) == std::vector<size_t>{0, 2, 4});
  CHECK(partition_balanced({5, 1, 1, 1, 1, 1}, 2) == std::vector<size_t>{0, 1, 6});
  CHECK(partition_balanced({3, 3, 3}, 3) == std::vector<size_t>{0, 1, 2, 3});
  CHECK(partition_balanced({7}, 1) == std::vector<size_t>{0, 1});
  // One dominant item: the other pieces share the rest instead of one taking a crumb.
  CHECK(partition_balanced({100, 1, 10, 1, 10, 1}, 3) == std::vector<size_t>{0, 1, 3, 6});
  CHECK_THROWS_AS(partition_balanced({1, 2}, 3), input_error);
  CHECK_THROWS_AS(partition_balanced({1, 2}, 0), input_error);
}
