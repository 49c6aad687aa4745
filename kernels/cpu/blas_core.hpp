#pragma once
// Which OpenBLAS kernels run our GEMMs. Debian 12's OpenBLAS 0.3.21 (a DYNAMIC_ARCH build)
// picks its kernels once, when it loads, from the processor's model or from
// OPENBLAS_CORETYPE. A processor newer than the build (Sapphire Rapids, for one) is not
// recognised and gets the Prescott (SSE3) kernels: sgemm at the MLP's shapes runs 2.5x
// slower than with the Haswell (AVX2 + FMA) kernels the same processor can run.
#include <string>

namespace troupe::kernels {

// The kernels in use, as OpenBLAS names them ("Haswell", "Prescott", ...).
std::string blas_core();

// The core type to load OpenBLAS with instead: "Haswell" when the processor has AVX2 and
// FMA but OpenBLAS chose older kernels; "" when its choice is already as good, or when
// OPENBLAS_CORETYPE is set (whoever set it chose). The AVX-512 kernels (SkylakeX) are not
// asked for: older OpenBLAS builds are known to compute wrong results with them on some
// of these processors (shared/STACK.md).
std::string better_blas_core();

}  // namespace troupe::kernels
