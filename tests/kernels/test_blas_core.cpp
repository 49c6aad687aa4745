// The GEMM kernels OpenBLAS loads: which ones a process asks for instead
// (kernels/cpu/blas_core.hpp), and that the test binary itself runs them.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>

#include "kernels/cpu/blas_core.hpp"

using troupe::kernels::blas_core;
using troupe::kernels::choose_blas_core;

TEST_CASE("blas_core: the older kernels a DYNAMIC_ARCH OpenBLAS falls back to are replaced by Haswell's, nothing else") {
  // asked (OPENBLAS_CORETYPE set), dynamic, AVX2 + FMA, what loaded -> what to ask for
  CHECK(choose_blas_core(false, true, true, "Prescott") == "Haswell");
  CHECK(choose_blas_core(false, true, true, "Sandybridge") == "Haswell");  // AVX without FMA
  CHECK(choose_blas_core(false, true, true, "Nehalem") == "Haswell");
  CHECK(choose_blas_core(false, true, true, "Haswell") == "");
  CHECK(choose_blas_core(false, true, true, "Zen") == "");
  CHECK(choose_blas_core(false, true, true, "SkylakeX") == "");  // better ones are kept
  CHECK(choose_blas_core(false, true, true, "Cooperlake") == "");
  CHECK(choose_blas_core(false, true, true, "SAPPHIRERAPIDS") == "");  // in any case
  CHECK(choose_blas_core(false, true, true, "HASWELL") == "");
  CHECK(choose_blas_core(true, true, true, "Prescott") == "");    // whoever set it chose
  CHECK(choose_blas_core(false, false, true, "PRESCOTT") == "");  // a fixed build ignores it
  CHECK(choose_blas_core(false, true, false, "Prescott") == "");  // the processor cannot do better
}

TEST_CASE("blas_core: this process runs the kernels the choice asks for") {
  CHECK_FALSE(blas_core().empty());
  // main() restarted with the better kernels (or they were chosen at load): nothing is left
  // to ask for.
  CHECK(troupe::kernels::better_blas_core().empty());
  const char* asked = std::getenv("OPENBLAS_CORETYPE");
  if (asked && std::string(asked) == "Haswell") CHECK(blas_core() == "Haswell");
}
