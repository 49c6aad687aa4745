#pragma once
// What the experiment commands share: flag parsing and number formatting.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace troupe::experiment {

inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t e; (e = s.find(',', b)) != std::string::npos; b = e + 1) out.push_back(s.substr(b, e - b));
  out.push_back(s.substr(b));
  return out;
}

// Parses `text` as a number in [lo, hi] into `out`; else prints what was expected, naming
// the command and the flag, and returns false.
inline bool parse_number(const char* command, const std::string& flag, const std::string& text, double lo, double hi,
                         double& out) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end || !(v >= lo && v <= hi)) {
    std::fprintf(stderr, "troupe experiment %s: %s expects a number in [%g, %g], got '%s'\n", command, flag.c_str(), lo,
                 hi, text.c_str());
    return false;
  }
  out = v;
  return true;
}

inline std::string fmt(double v, const char* f) {
  char b[48];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

}  // namespace troupe::experiment
