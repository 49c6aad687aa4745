// One doctest binary for all unit tests; ctest registers each TEST_CASE on its own.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
