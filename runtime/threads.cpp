#include "runtime/threads.hpp"

#include <cblas.h>  // openblas_set_num_threads
#include <omp.h>

#include <thread>

namespace troupe {

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

int set_compute_threads(int n) {
  if (n <= 0) n = hardware_threads();
  openblas_set_num_threads(1);
  omp_set_num_threads(n);
  return n;
}

}  // namespace troupe
