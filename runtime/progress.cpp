#include "runtime/progress.hpp"

#include <cstdio>
#include <filesystem>

#include "runtime/check.hpp"

namespace troupe {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) { return std::chrono::duration<double>(clock_type::now() - t).count(); }

std::string clock_str(double s) {
  char b[32];
  int v = int(s + 0.5);
  std::snprintf(b, sizeof b, "%d:%02d", v / 60, v % 60);
  return b;
}

std::string rate_str(double per_s, const char* unit) {
  char b[48];
  if (per_s >= 1e4)
    std::snprintf(b, sizeof b, "%.1fk %s/s", per_s / 1e3, unit);
  else
    std::snprintf(b, sizeof b, "%.0f %s/s", per_s, unit);
  return b;
}

}  // namespace

progress_log::progress_log(const proto::JobSpec& spec, int64_t total_steps, progress_display display)
    : spec_(spec), total_(total_steps), display_(display) {
  const std::string& path = spec.train().metrics_file();
  auto dir = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  metrics_.open(path, std::ios::app);
  if (!metrics_) throw input_error("train.metrics_file: cannot open '" + path + "' for appending");
  start_ = window_start_ = clock_type::now();
}

double progress_log::elapsed_s() const { return seconds_since(start_); }

void progress_log::step(int64_t step, float loss, float lr, float grad_norm, int64_t samples, int64_t tokens,
                        double compute_s, const std::string& extra_json) {
  window_samples_ += samples;
  window_tokens_ += tokens;
  loss_curve_.x.push_back(double(step + 1));
  loss_curve_.y.push_back(loss);
  double elapsed = elapsed_s();
  char line[256];
  std::snprintf(line, sizeof line,
                "{\"event\":\"step\",\"step\":%lld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.5f,\"samples\":%lld,"
                "\"tokens\":%lld,\"compute_s\":%.5f,\"elapsed_s\":%.3f",
                (long long)step + 1, loss, lr, grad_norm, (long long)samples, (long long)tokens, compute_s, elapsed);
  metrics_ << line << (extra_json.empty() ? "" : ",") << extra_json << "}\n";
  metrics_.flush();  // whole lines as they happen: a watcher (troupe bench recovery) reads them live
  const int64_t done = step + 1;
  const bool last = done == total_;
  if (display_ == progress_display::quiet) return;
  const bool live = display_ == progress_display::live_line;
  if (!last && !live && done % spec_.train().log_every() != 0) return;
  double window = seconds_since(window_start_);
  if (live && !last && window < 0.25) return;  // at most four redraws a second
  std::string rate = window_tokens_ ? rate_str(double(window_tokens_) / window, "tok")
                                    : rate_str(double(window_samples_) / window, "samples");
  double eta = elapsed / double(done) * double(total_ - done);
  std::printf("%sstep %5lld/%lld | loss %.4f | %s | elapsed %s | ETA %s%s", live ? "\r" : "", (long long)done,
              (long long)total_, loss, rate.c_str(), clock_str(elapsed).c_str(), clock_str(eta).c_str(),
              live && !last ? "   " : "\n");
  std::fflush(stdout);
  window_start_ = clock_type::now();
  window_samples_ = window_tokens_ = 0;
}

void progress_log::record(const std::string& json_object) { metrics_ << json_object << "\n"; }

void progress_log::eval(double loss, double accuracy, int64_t count) {
  char line[200];
  std::snprintf(line, sizeof line,
                "{\"event\":\"eval\",\"step\":%lld,\"loss\":%.6f,\"accuracy\":%.5f,\"count\":%lld,\"elapsed_s\":%.3f}",
                (long long)total_, loss, accuracy, (long long)count, elapsed_s());
  metrics_ << line << '\n';
  metrics_.flush();
}

void progress_log::finish() {
  metrics_.flush();
  std::string dir = std::filesystem::path(spec_.train().metrics_file()).parent_path().string();
  std::string plot = (dir.empty() ? std::string(".") : dir) + "/loss.svg";
  const bool show = display_ != progress_display::quiet;
  try {
    write_line_plot_svg(plot, spec_.name() + ": training loss", "step", "loss", {loss_curve_});
    if (show) std::printf("loss curve: %s\n", plot.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe: warning: %s\n", e.what());
  }
  if (show) std::printf("metrics:    %s\n", spec_.train().metrics_file().c_str());
}

}  // namespace troupe
