#pragma once
// One thread pool for compute: OpenMP. OpenBLAS runs single-threaded inside our
// parallel regions (kernels split GEMMs by rows), so the two never fight over cores.

namespace troupe {

// Sets the compute threads of the calling thread (OpenMP's count is per thread, so a
// device calls this on its own thread). n <= 0 means all cores. Returns the count used.
int set_compute_threads(int n);
int hardware_threads();

}  // namespace troupe
