#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "runtime/plot.hpp"
#include "runtime/check.hpp"

using namespace troupe;

namespace {
std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
}  // namespace

TEST_CASE("plot: an SVG with one polyline per series, round ticks, escaped labels") {
  plot_series a{"train <loss>", {1, 2, 3, 4}, {5.5, 4.0, NAN, 2.5}}, b{"val", {1, 4}, {5.0, 3.0}};
  write_line_plot_svg("/tmp/troupe_test_plot.svg", "a & b", "step", "loss", {a, b});
  std::string svg = slurp("/tmp/troupe_test_plot.svg");
  CHECK(svg.rfind("<svg", 0) == 0);
  CHECK(svg.find("</svg>") != std::string::npos);
  size_t lines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) ++lines;
  CHECK(lines == 2);
  CHECK(svg.find("train &lt;loss&gt;") != std::string::npos);
  CHECK(svg.find("a &amp; b") != std::string::npos);
  CHECK(svg.find(">3.5<") != std::string::npos);  // a tick at a round value between 2.5 and 5.5
  CHECK(svg.find("nan") == std::string::npos);     // the NaN point is left out, not drawn
}

TEST_CASE("plot: empty series and a flat line still give a valid picture, a bad path is an input_error") {
  write_line_plot_svg("/tmp/troupe_test_plot_empty.svg", "empty", "x", "y", {plot_series{"none", {}, {}}});
  CHECK(slurp("/tmp/troupe_test_plot_empty.svg").find("</svg>") != std::string::npos);
  write_line_plot_svg("/tmp/troupe_test_plot_flat.svg", "flat", "x", "y", {plot_series{"c", {0, 1}, {2, 2}}});
  CHECK(slurp("/tmp/troupe_test_plot_flat.svg").find("</svg>") != std::string::npos);
  CHECK_THROWS_AS(write_line_plot_svg("/nonexistent_dir/x.svg", "t", "x", "y", {}), input_error);
}
