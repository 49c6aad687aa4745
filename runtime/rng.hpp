#pragma once
// A small seeded generator whose stream is fixed by this file alone (std::
// distributions differ between standard libraries), so runs repeat bit for bit.
#include <cmath>
#include <cstdint>

namespace troupe {

class rng {
 public:
  explicit rng(uint64_t seed) : state_(seed) {}
  // splitmix64
  uint64_t next_u64() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
  // Uniform integer in [0, n), n > 0 (rejection-free multiply-shift; bias < 2^-64 * n).
  uint64_t below(uint64_t n) { return uint64_t((unsigned __int128)next_u64() * n >> 64); }
  // Standard normal (Box-Muller; one draw per call for a simple, fixed stream).
  double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  uint64_t state_;
};

}  // namespace troupe
