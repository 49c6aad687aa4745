#include "apps/bench.hpp"

#include <cstdio>

namespace troupe {

int bench_main(const std::vector<std::string>& args) {
  (void)args;
  std::fprintf(stderr, "troupe bench: not built yet\n");
  return 2;
}

}  // namespace troupe
