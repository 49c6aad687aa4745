#include "kernels/cpu/blas_core.hpp"

#include <cstdlib>
#include <set>

extern "C" char* openblas_get_corename(void);

namespace troupe::kernels {

std::string blas_core() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

std::string better_blas_core() {
#if defined(__x86_64__)
  if (std::getenv("OPENBLAS_CORETYPE")) return "";
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return "";
  // OpenBLAS's names for kernels that already use AVX2 and FMA or more.
  static const std::set<std::string> good = {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"};
  return good.count(blas_core()) ? "" : "Haswell";
#else
  return "";
#endif
}

}  // namespace troupe::kernels
