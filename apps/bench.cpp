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

#include "kernels/cpu/blas_core.hpp"
#include "kernels/cpu/gemm.hpp"
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
  std::string failure;
  std::thread worker([&] {
    try {
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
    } catch (const std::exception& e) {  // an exception must not leave the thread
      failure = e.what();
    }
  });
  worker.join();
  if (!failure.empty()) throw std::runtime_error(failure);
  return row;
}

// PyTorch 1.13 (Debian's python3-torch) training the same model with the same recipe,
// through tests/reference/torch_*.py; -1 when it could not run.
double torch_throughput(bool gpt, int torch_threads, int blas_threads, int steps) {
  // OPENBLAS_NUM_THREADS must be set before torch is imported, hence the environment.
  std::string cmd = "OPENBLAS_NUM_THREADS=" + std::to_string(blas_threads) +
                    " OMP_NUM_THREADS=" + std::to_string(torch_threads) + " /usr/bin/python3 tests/reference/" +
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

namespace {

// One line of the table: our trainer at some thread count, or PyTorch at some setting.
struct config_row {
  std::string job, unit, label;
  bool torch = false;
  int threads = 1, blas_threads = 1;
  std::vector<double> per_s;  // one throughput per round
  float first_loss = 0, last_loss = 0;
  bool ok = true;
  double median() const {
    std::vector<double> v = per_s;
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
  }
};

}  // namespace

bool bench_flags::parse(const std::vector<std::string>& args, const std::string& command,
                        const std::string& torch_flag, const std::string& usage) {
  for (size_t i = 0; i < args.size(); ++i) {
    bool has_value = i + 1 < args.size();
    if (args[i] == "--model" && has_value) {
      only = args[++i];
      if (only != "mlp" && only != "gpt") {
        std::fprintf(stderr, "%s: --model expects 'mlp' or 'gpt', got '%s'\n", command.c_str(), only.c_str());
        return false;
      }
    } else if (args[i] == torch_flag) {
      torch = torch_flag == "--torch";
    } else if (args[i] == "--json" && has_value) {
      json_path = args[++i];
    } else if ((args[i] == "--steps" || args[i] == "--rounds") && has_value) {
      bool is_steps = args[i] == "--steps";
      int v = std::atoi(args[++i].c_str());
      if (v < (is_steps ? 3 : 1) || v > 100000) {
        std::fprintf(stderr, "%s: %s expects an integer >= %d, got '%s'\n", command.c_str(), args[i - 1].c_str(),
                     is_steps ? 3 : 1, args[i].c_str());
        return false;
      }
      (is_steps ? steps : rounds) = v;
    } else {
      std::fprintf(stderr, "%s: unknown argument '%s' (%s)\n", command.c_str(), args[i].c_str(), usage.c_str());
      return false;
    }
  }
  return true;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

bool write_bench_json(const std::string& path, const std::string& json, const std::string& command) {
  std::error_code ec;
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (!(std::ofstream(path) << json)) {
    std::fprintf(stderr, "troupe %s: cannot write %s\n", command.c_str(), path.c_str());
    return false;
  }
  std::printf("json: %s\n", path.c_str());
  return true;
}

int bench_main(const std::vector<std::string>& args) {
  const char* usage = "usage: troupe bench train [--model mlp|gpt] [--steps N] [--rounds N] [--torch] [--json FILE]";
  if (!args.empty() && args[0] == "pipeline") return bench_pipeline_main({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "actors") return bench_actors_main({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "parallel") return bench_parallel_main({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "allreduce") return bench_allreduce_main({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "checkpoint") return bench_checkpoint_main({args.begin() + 1, args.end()});
  if (!args.empty() && args[0] == "recovery") return bench_recovery_main({args.begin() + 1, args.end()});
  if (args.empty() || args[0] != "train") {
    std::fprintf(stderr, "troupe bench: expected 'train', 'pipeline', 'actors', 'parallel', 'allreduce', 'checkpoint' or 'recovery' (%s)\n", usage);
    return 2;
  }
  bench_flags flags;
  flags.json_path = "runs/bench_train.json";
  if (!flags.parse({args.begin() + 1, args.end()}, "troupe bench", "--torch", usage)) return 2;
  const std::string& json_path = flags.json_path;
  const std::string& only = flags.only;
  const int steps = flags.steps, rounds = flags.rounds;
  const bool with_torch = flags.torch;
  std::string machine = machine_name();
  std::printf("troupe bench train on %s, %d hardware threads, linear layers' GEMMs by %s, OpenBLAS %s kernels\n",
              machine.c_str(), hardware_threads(), kernels::sgemm_library(), kernels::blas_core().c_str());
  std::printf(
      "throughput from the median step time after 3 warm-up steps; %d round%s, configurations\n"
      "interleaved within a round; the table shows the median round (min-max)\n\n",
      rounds, rounds == 1 ? "" : "s");
  std::printf("%-14s %-26s %6s %12s %-10s %19s %6s\n", "job", "setting", "steps", "throughput", "", "(min-max)",
              "check");
  std::vector<config_row> all;
  bool all_ok = true;
  for (const char* job : {"apps/jobs/fmnist_mlp.json", "apps/jobs/fortunes_gpt.json"}) {
    bool gpt = std::string(job).find("gpt") != std::string::npos;
    if (!only.empty() && (only == "gpt") != gpt) continue;
    int n = steps ? steps : (gpt ? 20 : 200);
    std::vector<config_row> rows;
    for (int t : {1, 2}) {
      config_row r;
      r.threads = t;
      r.label = "troupe " + std::to_string(t) + " thread" + (t == 1 ? "" : "s");
      rows.push_back(r);
    }
    if (with_torch)
      for (auto [tt, bt] : {std::pair{1, 1}, {2, 1}, {1, 2}, {2, 2}}) {
        config_row r;
        r.torch = true;
        r.threads = tt;
        r.blas_threads = bt;
        r.label = "PyTorch " + std::to_string(tt) + "t x OpenBLAS " + std::to_string(bt) + "t";
        rows.push_back(r);
      }
    for (int round = 0; round < rounds; ++round)
      for (auto& r : rows) {
        if (r.torch) {
          double v = torch_throughput(gpt, r.threads, r.blas_threads, n + 3);
          if (v > 0) r.per_s.push_back(v);
          continue;
        }
        bench_row m;
        try {
          m = measure(job, r.threads, n);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "troupe bench: %s: %s\n", job, e.what());
          return 1;
        }
        r.job = m.job;
        r.unit = m.unit;
        r.per_s.push_back(m.per_s);
        r.first_loss = m.first_loss;
        r.last_loss = m.last_loss;
        r.ok = r.ok && m.ok;
      }
    double ours_best = 0, torch_best = 0;
    for (auto& r : rows) {
      r.job = rows[0].job;
      r.unit = rows[0].unit;
      if (r.per_s.empty()) continue;
      auto [lo, hi] = std::minmax_element(r.per_s.begin(), r.per_s.end());
      char spread[48];
      std::snprintf(spread, sizeof spread, "(%.0f-%.0f)", *lo, *hi);
      std::printf("%-14s %-26s %6d %12.0f %-10s %19s %6s\n", r.job.c_str(), r.label.c_str(), n, r.median(),
                  r.unit.c_str(), spread, r.torch ? "" : (r.ok ? "ok" : "FAIL"));
      (r.torch ? torch_best : ours_best) = std::max(r.torch ? torch_best : ours_best, r.median());
      all_ok = all_ok && r.ok;
    }
    if (torch_best > 0)
      std::printf("%-14s best troupe / best PyTorch = %.2fx\n", rows[0].job.c_str(), ours_best / torch_best);
    std::printf("\n");
    std::fflush(stdout);
    all.insert(all.end(), rows.begin(), rows.end());
  }
  auto json_dir = std::filesystem::path(json_path).parent_path();
  std::error_code ec;
  if (!json_dir.empty()) std::filesystem::create_directories(json_dir, ec);
  std::ofstream f(json_path);
  if (!f) std::fprintf(stderr, "troupe bench: cannot write '%s'\n", json_path.c_str());
  if (f) {
    f << "{\"machine\":\"" << machine << "\",\"blas_core\":\"" << kernels::blas_core()
      << "\",\"hardware_threads\":" << hardware_threads() << ",\"rounds\":" << rounds
      << ",\"rows\":[";
    for (size_t i = 0; i < all.size(); ++i) {
      const auto& r = all[i];
      f << (i ? "," : "") << "{\"job\":\"" << r.job << "\",\"runner\":\"" << (r.torch ? "pytorch" : "troupe")
        << "\",\"threads\":" << r.threads << ",\"openblas_threads\":" << r.blas_threads << ",\"unit\":\"" << r.unit
        << "\",\"median\":" << r.median() << ",\"rounds\":[";
      for (size_t k = 0; k < r.per_s.size(); ++k) f << (k ? "," : "") << r.per_s[k];
      f << "],\"ok\":" << (r.ok ? "true" : "false") << "}";
    }
    f << "]}\n";
    std::printf("json: %s\n", json_path.c_str());
  }
  if (!all_ok) std::fprintf(stderr, "troupe bench: a run's loss was not finite or did not fall\n");
  return all_ok ? 0 : 1;
}

}  // namespace troupe
