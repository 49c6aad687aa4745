// The GEMM kernels OpenBLAS loaded: the test binary's main asks for better ones where
// OpenBLAS chose older kernels than the processor runs (kernels/cpu/blas_core.hpp).
#include <doctest/doctest.h>

#include <cstdlib>
#include <set>
#include <string>

#include "kernels/cpu/blas_core.hpp"

using namespace troupe::kernels;

TEST_CASE("blas_core: OpenBLAS runs kernels at least as new as the processor's AVX2 and FMA") {
  const std::string core = blas_core();
  CHECK_FALSE(core.empty());
  // Nothing better to ask for: main() already restarted with it, or the choice was good.
  CHECK(better_blas_core().empty());
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    const char* asked = std::getenv("OPENBLAS_CORETYPE");
    INFO("OPENBLAS_CORETYPE=", asked ? asked : "(unset)", ", kernels: ", core);
    static const std::set<std::string> good = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"};
    if (!asked)
      CHECK(good.count(core) == 1);  // detected well: nothing was asked
    else if (std::string(asked) == "Haswell")
      CHECK(core == "Haswell");  // what main() asks for (or the user did): it loaded
  }
#endif
}
