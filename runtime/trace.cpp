#include "runtime/trace.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>

#include "runtime/check.hpp"

namespace troupe {

double steady_now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

int trace_recorder::track(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find(tracks_.begin(), tracks_.end(), name);
  if (it != tracks_.end()) return int(it - tracks_.begin());
  tracks_.push_back(name);
  return int(tracks_.size() - 1);
}

void trace_recorder::record(trace_span span) {
  std::lock_guard<std::mutex> lock(mu_);
  spans_.push_back(std::move(span));
}

std::vector<trace_span> trace_recorder::spans() const {
  std::lock_guard<std::mutex> lock(mu_);
  return spans_;
}

std::vector<std::string> trace_recorder::track_names() const {
  std::lock_guard<std::mutex> lock(mu_);
  return tracks_;
}

void trace_recorder::write_chrome_trace(const std::string& path) const {
  auto spans = this->spans();
  auto tracks = track_names();
  double t0 = spans.empty() ? 0 : spans.front().start_s;
  for (const auto& s : spans) t0 = std::min(t0, s.start_s);
  std::ofstream f(path);
  if (!f) throw input_error("cannot write trace '" + path + "'");
  f << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  bool first = true;
  for (size_t i = 0; i < tracks.size(); ++i) {
    f << (first ? "" : ",\n") << "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":" << i
      << ",\"args\":{\"name\":\"" << tracks[i] << "\"}}";
    first = false;
  }
  char buf[256];
  for (const auto& s : spans) {
    std::snprintf(buf, sizeof buf,
                  ",\n{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":%.1f,\"dur\":%.1f,"
                  "\"args\":{\"step\":%lld}}",
                  s.name.c_str(), s.category.c_str(), s.track, (s.start_s - t0) * 1e6, (s.end_s - s.start_s) * 1e6,
                  (long long)s.step);
    f << buf;
  }
  f << "\n]}\n";
}

void trace_recorder::write_timeline_svg(const std::string& path, const std::string& title, int64_t first_step,
                                        int64_t last_step) const {
  auto tracks = track_names();
  std::vector<trace_span> spans;
  for (const auto& s : this->spans())
    if (s.step >= first_step && s.step <= last_step) spans.push_back(s);
  double t0 = 1e300, t1 = -1e300;
  for (const auto& s : spans) t0 = std::min(t0, s.start_s), t1 = std::max(t1, s.end_s);
  if (spans.empty()) t0 = 0, t1 = 1;
  const double W = 960, L = 150, R = 20, T = 50, row = 30, H = T + row * double(tracks.size()) + 60;
  auto px = [&](double t) { return L + (t - t0) / (t1 - t0) * (W - L - R); };
  const std::map<std::string, const char*> colors{
      {"forward", "#4e79a7"},   {"backward", "#f28e2b"},  {"weight-gradient", "#e15759"},
      {"allreduce", "#59a14f"}, {"optimizer", "#b07aa1"}};
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n"
    << "<text x='" << W / 2 << "' y='22' text-anchor='middle' font-size='15'>" << title << "</text>\n";
  for (size_t i = 0; i < tracks.size(); ++i) {
    double y = T + row * double(i);
    o << "<text x='" << L - 8 << "' y='" << y + row / 2 + 4 << "' text-anchor='end'>" << tracks[i] << "</text>\n"
      << "<rect x='" << L << "' y='" << y + 3 << "' width='" << W - L - R << "' height='" << row - 6
      << "' fill='#f3f3f3'/>\n";
  }
  for (const auto& s : spans) {
    auto c = colors.find(s.category);
    double y = T + row * double(s.track);
    double x0 = px(s.start_s), w = std::max(0.5, px(s.end_s) - x0);
    o << "<rect x='" << x0 << "' y='" << y + 3 << "' width='" << w << "' height='" << row - 6 << "' fill='"
      << (c == colors.end() ? "#999" : c->second) << "'><title>" << s.name << " (" << s.category << ", step "
      << s.step << ", " << (s.end_s - s.start_s) * 1e3 << " ms)</title></rect>\n";
    if (w > 14)
      o << "<text x='" << x0 + w / 2 << "' y='" << y + row / 2 + 4 << "' text-anchor='middle' fill='white' "
        << "font-size='10'>" << s.name << "</text>\n";
  }
  double legend_y = T + row * double(tracks.size()) + 25;
  double x = L;
  for (const char* cat : {"forward", "backward", "weight-gradient", "allreduce", "optimizer"}) {
    o << "<rect x='" << x << "' y='" << legend_y - 10 << "' width='12' height='12' fill='" << colors.at(cat)
      << "'/><text x='" << x + 16 << "' y='" << legend_y << "'>" << cat << "</text>\n";
    x += std::string(cat).size() > 10 ? 130 : 90;
  }
  char span[64];
  std::snprintf(span, sizeof span, "%.1f ms shown; grey = idle", (t1 - t0) * 1e3);
  o << "<text x='" << W - R << "' y='" << legend_y << "' text-anchor='end'>" << span << "</text>\n</svg>\n";
  std::ofstream f(path);
  if (!f) throw input_error("cannot write timeline '" + path + "'");
  f << o.str();
}

}  // namespace troupe
