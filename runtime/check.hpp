#pragma once
// Invariant checks (abort with file:line and the values involved) and the error type
// for bad input from outside (job specs, data files, flags), which callers turn into a
// clear message and a non-zero exit.
#include <chrono>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>

namespace troupe {

// Bad input from outside: the message names what was wrong and what was expected.
class input_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The environment variable `name` as milliseconds in lo..hi, or `fallback` when it is not
// set; input_error naming the variable, its value and the range otherwise.
std::chrono::milliseconds env_milliseconds(const char* name, std::chrono::milliseconds fallback, long lo, long hi);

// The message of a caught exception (what() of a std::exception, else "unknown
// exception"): for handlers that get an exception_ptr.
std::string exception_text(std::exception_ptr e);

[[noreturn]] void check_failed(const char* file, int line, const char* cond, const std::string& detail);

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Ts>
void append(std::ostringstream& os, const T& x, const Ts&... xs) {
  os << x;
  append(os, xs...);
}
template <class... Ts>
std::string cat(const Ts&... xs) {
  std::ostringstream os;
  append(os, xs...);
  return os.str();
}
}  // namespace detail

}  // namespace troupe

// TROUPE_CHECK(cond, "what", value, ...) aborts with file:line, the condition and the
// streamed details when an internal invariant is broken.
#define TROUPE_CHECK(cond, ...)                                                             \
  do {                                                                                      \
    if (!(cond)) ::troupe::check_failed(__FILE__, __LINE__, #cond, ::troupe::detail::cat(__VA_ARGS__)); \
  } while (0)
