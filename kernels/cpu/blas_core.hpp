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

// The decision, from its inputs: the core type to load OpenBLAS with instead of `loaded`,
// or "" to keep it. "Haswell" only when nobody set OPENBLAS_CORETYPE (`asked`), the
// library reads it (`dynamic`: a DYNAMIC_ARCH build; a fixed build ignores it), the
// processor has AVX2 and FMA, and `loaded` (any case) is older kernels than Haswell's. The
// AVX-512 kernels (SkylakeX) are never asked for: older OpenBLAS builds are known to
// compute wrong results with them on some of these processors (shared/STACK.md).
std::string choose_blas_core(bool asked, bool dynamic, bool avx2_fma, const std::string& loaded);

// choose_blas_core for this process: its environment, library and processor.
std::string better_blas_core();

}  // namespace troupe::kernels
