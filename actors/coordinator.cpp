#include "actors/coordinator.hpp"

#include <cstdio>
#include <filesystem>

#include "actors/data_feeder.hpp"
#include "actors/device.hpp"

namespace troupe {

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

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

void report_step(caf::stateful_actor<coordinator_state>* self, const step_report& r) {
  auto& s = self->state;
  s.window_samples += r.samples;
  s.window_tokens += r.tokens;
  s.loss_curve.x.push_back(double(r.step + 1));
  s.loss_curve.y.push_back(r.loss);
  double elapsed = seconds_since(s.start);
  char line[256];
  std::snprintf(line, sizeof line,
                "{\"event\":\"step\",\"step\":%lld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.5f,\"samples\":%lld,"
                "\"tokens\":%lld,\"compute_s\":%.5f,\"elapsed_s\":%.3f}",
                (long long)r.step + 1, r.loss, r.lr, r.grad_norm, (long long)r.samples, (long long)r.tokens,
                r.compute_s, elapsed);
  s.metrics << line << '\n';
  int64_t step = r.step + 1;
  bool last = step == s.total_steps;
  if (s.opts.quiet) return;
  if (!last && step % s.spec.train().log_every() != 0 && !s.opts.live_progress) return;
  double window = seconds_since(s.window_start);
  if (window < 0.25 && !last && s.opts.live_progress) return;  // at most four redraws a second
  std::string rate = s.window_tokens ? rate_str(double(s.window_tokens) / window, "tok")
                                     : rate_str(double(s.window_samples) / window, "samples");
  double eta = elapsed / double(step) * double(s.total_steps - step);
  std::printf("%sstep %5lld/%lld | loss %.4f | %s | elapsed %s | ETA %s%s", s.opts.live_progress ? "\r" : "",
              (long long)step, (long long)s.total_steps, r.loss, rate.c_str(), clock_str(elapsed).c_str(),
              clock_str(eta).c_str(), s.opts.live_progress && !last ? "   " : "\n");
  std::fflush(stdout);
  s.window_start = clock_type::now();
  s.window_samples = s.window_tokens = 0;
}

void finish(caf::stateful_actor<coordinator_state>* self) {
  auto& s = self->state;
  self->request(s.feeder, caf::infinite, eval_atom::value).then([=](tensor_batch& eval_set) {
    auto& s = self->state;
    self->request(s.dev, caf::infinite, eval_atom::value, std::move(eval_set)).then([=](const eval_report& ev) {
      auto& s = self->state;
      char line[200];
      std::snprintf(line, sizeof line,
                    "{\"event\":\"eval\",\"step\":%lld,\"loss\":%.6f,\"accuracy\":%.5f,\"count\":%lld,"
                    "\"elapsed_s\":%.3f}",
                    (long long)s.total_steps, ev.loss, ev.accuracy, (long long)ev.count, seconds_since(s.start));
      s.metrics << line << '\n';
      s.metrics.flush();
      auto deliver = [=](const std::string& sample) {
        auto& s = self->state;
        std::string dir = std::filesystem::path(s.spec.train().metrics_file()).parent_path().string();
        std::string plot = (dir.empty() ? std::string(".") : dir) + "/loss.svg";
        try {  // exceptions never leave a handler: a plot that cannot be written is a warning
          write_line_plot_svg(plot, s.spec.name() + ": training loss", "step", "loss", {s.loss_curve});
          if (!s.opts.quiet) std::printf("loss curve: %s\n", plot.c_str());
        } catch (const std::exception& e) {
          std::fprintf(stderr, "troupe: warning: %s\n", e.what());
        }
        if (!s.opts.quiet) std::printf("metrics:    %s\n", s.spec.train().metrics_file().c_str());
        s.done.deliver(ev, sample);
        self->send_exit(s.feeder, caf::exit_reason::user_shutdown);
        self->send_exit(s.dev, caf::exit_reason::user_shutdown);
        self->quit();
      };
      if (s.data->kind != model_kind::gpt || s.spec.train().sample_tokens() == 0) {
        deliver("");
        return;
      }
      self->request(s.dev, caf::infinite, generate_atom::value, std::string("\n"),
                    int32_t(s.spec.train().sample_tokens()), uint64_t(s.spec.train().seed()))
          .then([=](const std::string& sample) { deliver(sample); });
    });
  });
}

}  // namespace

caf::behavior coordinator(caf::stateful_actor<coordinator_state>* self, proto::JobSpec spec,
                          std::shared_ptr<const training_data> data, coordinator_options opts) {
  auto& s = self->state;
  s.spec = std::move(spec);
  s.data = std::move(data);
  s.opts = opts;
  s.total_steps = total_steps(s.spec, *s.data);
  return {
      [=](run_atom) {
        auto& s = self->state;
        s.done = self->make_response_promise();
        const std::string& path = s.spec.train().metrics_file();
        auto dir = std::filesystem::path(path).parent_path();
        if (!dir.empty()) std::filesystem::create_directories(dir);
        s.metrics.open(path, std::ios::app);
        if (!s.metrics) {
          s.done.deliver(caf::make_error(caf::sec::runtime_error, "cannot open metrics file '" + path + "'"));
          return;
        }
        s.start = s.window_start = clock_type::now();
        s.dev = self->spawn<caf::detached>(device, s.spec, s.total_steps, caf::actor_cast<caf::actor>(self));
        s.feeder = self->spawn(data_feeder, s.spec, s.data);
        self->send(s.feeder, start_atom::value, s.dev, s.total_steps, s.opts.prefetch);
      },
      [=](const step_report& r) {
        report_step(self, r);
        if (r.step + 1 == self->state.total_steps) finish(self);
      },
  };
}

}  // namespace troupe
