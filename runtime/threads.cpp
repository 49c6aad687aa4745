#include "runtime/threads.hpp"

#include <cblas.h>  // openblas_set_num_threads
#include <omp.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "kernels/cpu/blas_core.hpp"

namespace troupe {

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

void use_fast_blas(char** argv) {
  const std::string core = kernels::better_blas_core();
  if (core.empty() || setenv("OPENBLAS_CORETYPE", core.c_str(), 1) != 0) return;
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");  // still here: the exec failed; go on with what loaded
}

int set_compute_threads(int n) {
  if (n <= 0) n = hardware_threads();
  openblas_set_num_threads(1);
  omp_set_num_threads(n);
  return n;
}

}  // namespace troupe
