#include "runtime/threads.hpp"

#include <cblas.h>  // openblas_set_num_threads
#include <omp.h>
#include <sys/auxv.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "kernels/cpu/blas_core.hpp"

namespace troupe {

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

void use_fast_blas(char** argv) {
  if (std::getenv("TROUPE_NO_BLAS_RESTART")) return;
  // Started through the dynamic loader (ld.so ./troupe ...): /proc/self/exe is the loader.
  if (getauxval(AT_BASE) == 0) return;
  const std::string core = kernels::better_blas_core();
  if (core.empty() || setenv("OPENBLAS_CORETYPE", core.c_str(), 1) != 0) return;
  // The program's own path, so the process keeps its name (exec'ing the link itself would
  // name it "exe"); the link when the file is gone.
  char path[4096];
  const ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
  std::string self = "/proc/self/exe";
  if (n > 0) {
    path[n] = 0;
    const std::string p(path);
    if (p.size() < 10 || p.compare(p.size() - 10, 10, " (deleted)") != 0) self = p;
  }
  execv(self.c_str(), argv);
  unsetenv("OPENBLAS_CORETYPE");  // still here: the exec failed; go on with what loaded
}

int set_compute_threads(int n) {
  if (n <= 0) n = hardware_threads();
  openblas_set_num_threads(1);
  omp_set_num_threads(n);
  return n;
}

}  // namespace troupe
