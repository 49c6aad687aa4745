#pragma once
// One thread pool for compute: OpenMP. OpenBLAS runs single-threaded inside our
// parallel regions (kernels split GEMMs by rows), so the two never fight over cores.

namespace troupe {

// Sets the compute threads of the calling thread (OpenMP's count is per thread, so a
// device calls this on its own thread). n <= 0 means all cores. Returns the count used.
int set_compute_threads(int n);
int hardware_threads();

// Call first thing in main(). When OpenBLAS loaded older kernels than this processor can
// run (kernels/cpu/blas_core.hpp), starts this program again in place (same pid, same
// arguments) with OPENBLAS_CORETYPE set to the better ones, which OpenBLAS reads only as
// it loads; child processes inherit the setting. Returns (with nothing changed) when the
// kernels are already right, when TROUPE_NO_BLAS_RESTART is set (under valgrind without
// --trace-children, say), when started through the dynamic loader, or if the restart fails.
void use_fast_blas(char** argv);

}  // namespace troupe
