#include "runtime/check.hpp"

#include <cstdio>
#include <cstdlib>

namespace troupe {

std::string exception_text(std::exception_ptr e) {
  try {
    if (e) std::rethrow_exception(e);
  } catch (const std::exception& x) {
    return x.what();
  } catch (...) {
  }
  return "unknown exception";
}

void check_failed(const char* file, int line, const char* cond, const std::string& detail) {
  std::fprintf(stderr, "%s:%d: check failed: %s %s\n", file, line, cond, detail.c_str());
  std::fflush(stderr);
  std::abort();
}

}  // namespace troupe
