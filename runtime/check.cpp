#include "runtime/check.hpp"

#include <cstdio>
#include <cstdlib>

namespace troupe {

std::chrono::milliseconds env_milliseconds(const char* name, std::chrono::milliseconds fallback, long lo, long hi) {
  const char* ms = std::getenv(name);
  if (!ms) return fallback;
  char* end = nullptr;
  const long v = std::strtol(ms, &end, 10);
  if (!*ms || *end || v < lo || v > hi)
    throw input_error(std::string(name) + ": expected milliseconds " + std::to_string(lo) + ".." + std::to_string(hi) +
                      ", got '" + ms + "'");
  return std::chrono::milliseconds(v);
}

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
