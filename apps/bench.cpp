// troupe bench train: training throughput of the two example models at 1 and 2 compute
// threads, measured on the trainer the device actor runs (forward, backward, clipping,
// optimizer), with the median step time over timed steps after warm-up. The benchmark
// checks its own answer: every loss must be finite and the loss must fall over the run.
#include "apps/bench.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"
#include "runtime/training.hpp"

namespace troupe {

namespace {

struct bench_row {
  std::string job, unit;
  int threads = 0;
  int steps = 0;
  double median_step_s = 0;
  double per_s = 0;  // samples/s (MLP) or tokens/s (GPT)
  float first_loss = 0, last_loss = 0;
  bool ok = false;
};

std::string machine_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown cpu";
}

bench_row measure(const std::string& job_path, int threads, int timed_steps) {
  proto::JobSpec spec = load_job_spec(job_path);
  spec.mutable_train()->clear_epochs();
  spec.mutable_train()->set_steps(uint32_t(timed_steps + 3));
  spec.mutable_train()->set_threads(uint32_t(threads));
  auto data = load_training_data(spec);
  bench_row row;
  row.job = spec.name();
  row.threads = threads;
  row.steps = timed_steps;
  row.unit = data->kind == model_kind::gpt ? "tokens/s" : "samples/s";
  // A thread of its own, as the device actor has: OpenMP's thread count is per thread.
  std::thread worker([&] {
    set_compute_threads(threads);
    batch_source source(spec, data);
    trainer t(spec, timed_steps + 3);
    std::vector<double> times;
    std::vector<float> losses;
    int64_t per_step = 0;
    for (int s = 0; s < timed_steps + 3; ++s) {
      batch b = source.next();
      per_step = data->kind == model_kind::gpt ? b.x.numel() : b.x.dim(0);
      auto t0 = std::chrono::steady_clock::now();
      step_result r = t.train_step(b.x, b.y);
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (s >= 3) times.push_back(dt);
      losses.push_back(r.loss);
    }
    std::sort(times.begin(), times.end());
    row.median_step_s = times[times.size() / 2];
    row.per_s = double(per_step) / row.median_step_s;
    row.first_loss = losses.front();
    row.last_loss = losses.back();
    bool finite = std::all_of(losses.begin(), losses.end(), [](float l) { return std::isfinite(l); });
    float tail = 0;
    for (size_t i = losses.size() - 3; i < losses.size(); ++i) tail += losses[i] / 3;
    row.ok = finite && tail < losses.front();
  });
  worker.join();
  return row;
}

// PyTorch 1.13 (Debian's python3-torch) training the same model with the same recipe,
// through tests/reference/torch_*.py; -1 when it could not run.
double torch_throughput(bool gpt, int torch_threads, int blas_threads, int steps) {
  // OPENBLAS_NUM_THREADS must be set before torch is imported, hence the environment.
  std::string cmd = "OPENBLAS_NUM_THREADS=" + std::to_string(blas_threads) + " OMP_NUM_THREADS=" +
                    std::to_string(torch_threads) + " /usr/bin/python3 tests/reference/" +
                    (gpt ? "torch_fortunes_gpt.py --eval 0" : "torch_fmnist_mlp.py") + " --threads " +
                    std::to_string(torch_threads) + " --steps " + std::to_string(steps) + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  const char* key = gpt ? "tokens/s=" : "samples/s=";
  size_t at = out.find(key);
  if (at == std::string::npos) {
    std::fprintf(stderr, "troupe bench: PyTorch run failed: %s\n%s", cmd.c_str(), out.c_str());
    return -1;
  }
  return std::atof(out.c_str() + at + std::strlen(key));
}

}  // namespace

int bench_main(const std::vector<std::string>& args) {
  if (args.empty() || args[0] != "train") {
    std::fprintf(stderr, "troupe bench: expected 'train' (usage: troupe bench train [--model mlp|gpt] [--steps N] [--torch] [--json FILE])\n");
    return 2;
  }
  std::string json_path = "runs/bench_train.json";
  int steps = 0;
  std::string only;
  bool with_torch = false;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] == "--model" && i + 1 < args.size()) {
      only = args[++i];
      if (only != "mlp" && only != "gpt") {
        std::fprintf(stderr, "troupe bench: --model expects 'mlp' or 'gpt', got '%s'\n", only.c_str());
        return 2;
      }
    } else if (args[i] == "--torch") {
      with_torch = true;
    } else if (args[i] == "--json" && i + 1 < args.size()) {
      json_path = args[++i];
    } else if (args[i] == "--steps" && i + 1 < args.size()) {
      steps = std::atoi(args[++i].c_str());
      if (steps < 3) {
        std::fprintf(stderr, "troupe bench: --steps expects an integer >= 3, got '%s'\n", args[i].c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr, "troupe bench: unknown argument '%s'\n", args[i].c_str());
      return 2;
    }
  }
  std::string machine = machine_name();
  std::printf("troupe bench train on %s, %d hardware threads\n", machine.c_str(), hardware_threads());
  std::printf("median step time over timed steps after 3 warm-up steps\n\n");
  std::printf("%-14s %7s %6s %12s %14s %10s %10s %6s\n", "job", "threads", "steps", "step(ms)", "throughput",
              "loss[0]", "loss[-1]", "check");
  std::vector<bench_row> rows, torch_rows;
  bool all_ok = true;
  for (const char* job : {"apps/jobs/fmnist_mlp.json", "apps/jobs/fortunes_gpt.json"}) {
    bool gpt = std::string(job).find("gpt") != std::string::npos;
    if (!only.empty() && (only == "gpt") != gpt) continue;
    for (int threads : {1, 2}) {
      bench_row r;
      try {
        r = measure(job, threads, steps ? steps : (gpt ? 20 : 200));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "troupe bench: %s: %s\n", job, e.what());
        return 1;
      }
      std::printf("%-14s %7d %6d %12.3f %10.0f %-9s %10.4f %10.4f %6s\n", r.job.c_str(), r.threads, r.steps,
                  r.median_step_s * 1e3, r.per_s, r.unit.c_str(), r.first_loss, r.last_loss, r.ok ? "ok" : "FAIL");
      std::fflush(stdout);
      all_ok = all_ok && r.ok;
      rows.push_back(r);
    }
    if (!with_torch) continue;
    double ours_best = 0, torch_best = 0;
    for (const auto& r : rows)
      if ((r.unit == "tokens/s") == gpt) ours_best = std::max(ours_best, r.per_s);
    for (auto [tt, bt] : {std::pair{1, 1}, {2, 1}, {1, 2}, {2, 2}}) {
      int n = steps ? steps : (gpt ? 20 : 200);
      double v = torch_throughput(gpt, tt, bt, n + 3);
      if (v < 0) continue;
      torch_best = std::max(torch_best, v);
      std::printf("%-14s %7s %6d %12.3f %10.0f %-9s   (PyTorch 1.13: torch threads %d, OpenBLAS threads %d)\n",
                  ("torch:" + rows.back().job).c_str(), (std::to_string(tt) + "x" + std::to_string(bt)).c_str(), n,
                  (gpt ? 16.0 * 128 : 128.0) / v * 1e3, v, rows.back().unit.c_str(), tt, bt);
      std::fflush(stdout);
      bench_row t;
      t.job = "torch:" + rows.back().job;
      t.unit = rows.back().unit;
      t.threads = tt * 10 + bt;
      t.steps = n;
      t.per_s = v;
      t.ok = true;
      torch_rows.push_back(t);
    }
    if (torch_best > 0)
      std::printf("%-14s best troupe / best PyTorch = %.2fx\n\n", rows.back().job.c_str(), ours_best / torch_best);
  }
  auto json_dir = std::filesystem::path(json_path).parent_path();
  if (!json_dir.empty()) std::filesystem::create_directories(json_dir);
  std::ofstream f(json_path);
  if (f) {
    f << "{\"machine\":\"" << machine << "\",\"hardware_threads\":" << hardware_threads() << ",\"rows\":[";
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      f << (i ? "," : "") << "{\"job\":\"" << r.job << "\",\"threads\":" << r.threads << ",\"steps\":" << r.steps
        << ",\"median_step_s\":" << r.median_step_s << ",\"throughput\":" << r.per_s << ",\"unit\":\"" << r.unit
        << "\",\"first_loss\":" << r.first_loss << ",\"last_loss\":" << r.last_loss
        << ",\"ok\":" << (r.ok ? "true" : "false") << "}";
    }
    f << "],\"pytorch\":[";
    for (size_t i = 0; i < torch_rows.size(); ++i) {
      const auto& r = torch_rows[i];
      f << (i ? "," : "") << "{\"job\":\"" << r.job << "\",\"torch_threads\":" << r.threads / 10
        << ",\"openblas_threads\":" << r.threads % 10 << ",\"throughput\":" << r.per_s << ",\"unit\":\"" << r.unit
        << "\"}";
    }
    f << "]}\n";
    std::printf("\njson: %s\n", json_path.c_str());
  }
  if (!all_ok) std::fprintf(stderr, "troupe bench: a run's loss was not finite or did not fall\n");
  return all_ok ? 0 : 1;
}

}  // namespace troupe
