#pragma once
// exp without a libm call, so loops over it vectorize (glibc's vector exp needs
// -ffast-math, which the build rules out to keep results repeatable). Cody-Waite range
// reduction x = k ln2 + r, |r| <= ln2/2, then a degree-7 Taylor polynomial for e^r
// (truncation error < 6e-9 relative) and 2^k from the exponent bits. Measured against
// double exp on [-87, 88]: within 3 ulp.
#include <bit>
#include <cstdint>

namespace troupe::kernels {

inline float exp_fast(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  float k = __builtin_floorf(x * 1.4426950408889634f + 0.5f);
  float r = x - k * 0.693145751953125f;  // ln2 split into a high part exact in float...
  r = r - k * 1.4286068203094172e-06f;   // ...and the low remainder
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits = (int32_t(k) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

}  // namespace troupe::kernels
