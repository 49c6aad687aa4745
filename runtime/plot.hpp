#pragma once
// Small SVG line plots, so a run leaves pictures a person can open in any browser.
#include <string>
#include <vector>

namespace troupe {

struct plot_series {
  std::string label;
  std::vector<double> x, y;
};

// Writes an SVG line chart; throws input_error if the file cannot be written.
void write_line_plot_svg(const std::string& path, const std::string& title, const std::string& x_label,
                         const std::string& y_label, const std::vector<plot_series>& series);

}  // namespace troupe
