// One doctest binary for all unit tests; ctest registers each TEST_CASE on its own.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "runtime/threads.hpp"

int main(int argc, char** argv) {
  troupe::use_fast_blas(argv);  // the same GEMM kernels as the troupe binary the tests start
  return doctest::Context(argc, argv).run();
}
