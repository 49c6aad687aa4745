#pragma once
// The pause a polling loop takes between looks (x86-64's `pause`: frees the core's
// pipeline for its sibling and cools the spin; nothing elsewhere).
namespace troupe {

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

}  // namespace troupe
