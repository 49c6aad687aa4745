#include "kernels/cpu/blas_core.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>

extern "C" char* openblas_get_corename(void);
extern "C" char* openblas_get_config(void);

namespace troupe::kernels {

std::string blas_core() {
  const char* name = openblas_get_corename();
  return name ? name : "";
}

std::string choose_blas_core(bool asked, bool dynamic, bool avx2_fma, const std::string& loaded) {
  if (asked || !dynamic || !avx2_fma) return "";
  std::string name = loaded;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  // OpenBLAS's x86-64 kernels that already use AVX2 and FMA, or more.
  for (const char* good : {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"})
    if (name == good) return "";
  return "Haswell";
}

std::string better_blas_core() {
#if defined(__x86_64__)
  const char* config = openblas_get_config();
  return choose_blas_core(std::getenv("OPENBLAS_CORETYPE") != nullptr,
                          config && std::strstr(config, "DYNAMIC_ARCH") != nullptr,
                          __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), blas_core());
#else
  return "";
#endif
}

}  // namespace troupe::kernels
