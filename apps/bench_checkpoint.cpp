// troupe bench checkpoint: what a checkpoint costs the two example jobs (as one
// process, one stage): the median training step, the median in-memory snapshot taken
// after every step (phase 1: the copy of parameters, optimizer state and step the device
// makes before it goes on), its share of the step (issue 5's bar: at most 3.5% with a
// snapshot every step), and the median time to persist one (phase 2, in the background
// in a real run: checksummed files, fsync, rename). Also the snapshot as a run takes it
// (runtime/background_snapshot.hpp): copied on a thread of its own while the next step
// computes its gradients, that step timed against steps without a copy beside them,
// interleaved (the bar is taken on this one). Every row checks itself: the snapshot
// read back from disk equals the one taken byte for byte, and a fresh trainer restored
// from it takes the next step exactly as the original does (same loss bits, same
// parameters after). A mismatch fails the run. Also writes the table as JSON.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "apps/bench.hpp"
#include "runtime/background_snapshot.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"
#include "runtime/training.hpp"

namespace troupe {

namespace {

using clock = std::chrono::steady_clock;

double ms_since(clock::time_point t0) { return std::chrono::duration<double, std::milli>(clock::now() - t0).count(); }

bool same_bytes(const checkpoint_shard& a, const checkpoint_shard& b) {
  if (a.texts != b.texts || a.tensors.size() != b.tensors.size()) return false;
  for (const auto& [name, t] : a.tensors) {
    auto it = b.tensors.find(name);
    if (it == b.tensors.end() || it->second.bytes() != t.bytes() || it->second.shape() != t.shape() ||
        std::memcmp(it->second.raw(), t.raw(), t.bytes()) != 0)
      return false;
  }
  return true;
}

}  // namespace

namespace {
int run_bench(int steps, const std::string& json_path);
}

int bench_checkpoint_main(const std::vector<std::string>& args) {
  const char* usage = "usage: troupe bench checkpoint [--steps N] [--json FILE]";
  int steps = 30;
  std::string json_path = "runs/bench_checkpoint.json";
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--steps" && i + 1 < args.size()) {
      char* end = nullptr;
      const long v = std::strtol(args[++i].c_str(), &end, 10);
      if (args[i].empty() || *end || v < 3 || v > 100000) {
        std::fprintf(stderr, "troupe bench checkpoint: --steps expects 3..100000, got '%s' (%s)\n", args[i].c_str(), usage);
        return 2;
      }
      steps = int(v);
    } else if (args[i] == "--json" && i + 1 < args.size()) {
      json_path = args[++i];
    } else {
      std::fprintf(stderr, "troupe bench checkpoint: unknown or incomplete argument '%s' (%s)\n", args[i].c_str(), usage);
      return 2;
    }
  }
  try {
    return run_bench(steps, json_path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe bench checkpoint: %s (run it from the repository root: it reads apps/jobs/)\n", e.what());
    return 1;
  }
}

namespace {

int run_bench(int steps, const std::string& json_path) {
  const int threads = hardware_threads();
  set_compute_threads(threads);
  std::printf("troupe bench checkpoint: %d steps per job after 3 warm-up steps, %d compute threads, a snapshot after\n"
              "every step; medians. persist: one version written as a real run's background writer does.\n\n",
              steps, threads);
  std::printf("%-12s %10s %10s %12s %9s %14s %10s %11s %7s\n", "job", "state MB", "step ms", "snapshot ms", "on path",
              "pipelined ms", "pipelined", "persist ms", "check");
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("troupe_bench_checkpoint_" +
                                                                               std::to_string(::getpid()));
  std::string json = "{\"threads\":" + std::to_string(threads) + ",\"rows\":[";
  bool all_ok = true, first = true;
  double worst_overhead = -1e9;  // the largest pipelined overhead of the jobs
  for (const char* job : {"apps/jobs/fmnist_mlp.json", "apps/jobs/fortunes_gpt.json"}) {
    proto::JobSpec spec = load_job_spec(job);
    // The whole model as one trainer (the job's parallel section is not used): what
    // checkpoints today.
    auto data = load_training_data(spec);
    batch_source source(spec, data);
    trainer t(spec, steps + 4);
    for (int k = 0; k < 3; ++k) {
      batch b = source.next();
      t.train_step(b.x, b.y);
    }
    std::vector<double> step_ms, snap_ms;
    checkpoint_shard last;
    for (int k = 0; k < steps; ++k) {
      batch b = source.next();
      auto t0 = clock::now();
      t.train_step(b.x, b.y);
      step_ms.push_back(ms_since(t0));
      t0 = clock::now();
      last = t.snapshot();
      snap_ms.push_back(ms_since(t0));
    }
    double state_bytes = 0;
    for (const auto& [name, x] : last.tensors) state_bytes += double(x.bytes());
    std::vector<double> persist_ms;
    for (int k = 0; k < 3; ++k) {
      auto t0 = clock::now();
      commit_checkpoint(dir, steps + 3, {{"device", last}}, 1);
      persist_ms.push_back(ms_since(t0));
    }
    // The checks: read back byte for byte, and a restored trainer steps as the original.
    const auto back = load_latest_checkpoint(dir);
    bool ok = back.step == steps + 3 && back.shards.count("device") && same_bytes(back.shards.at("device"), last);
    if (ok) {
      trainer fresh(spec, steps + 4);
      fresh.restore(back.shards.at("device"));
      batch b = source.next();
      const step_result a = t.train_step(b.x, b.y), c = fresh.train_step(b.x, b.y);
      ok = std::memcmp(&a.loss, &c.loss, sizeof a.loss) == 0 &&
           std::memcmp(t.params().flat().raw(), fresh.params().flat().raw(), t.params().flat().bytes()) == 0;
    }
    all_ok = all_ok && ok;
    // Pipelined: a copy after every odd step runs beside the even step that follows; the
    // even steps (their wait for the copy included) against the odd ones.
    std::vector<double> beside, alone;
    {
      background_snapshot snapshots;
      checkpoint_shard copy;
      for (int k = 0; k < 2 * steps; ++k) {
        batch b = source.next();
        auto t0 = clock::now();
        const float loss = t.compute_gradients(b.x, b.y);
        snapshots.settle();
        t.apply_gradients();
        (void)loss;
        (k % 2 == 0 ? beside : alone).push_back(ms_since(t0));
        if (k % 2 == 1) snapshots.start([&] { t.snapshot_into(copy); });
      }
      snapshots.settle();
      beside.erase(beside.begin());  // step 0 had no copy beside it
    }
    const double step = median_of(step_ms), snap = median_of(snap_ms), persist = median_of(persist_ms);
    const double overhead = step > 0 ? snap / step : 0;
    const double plain = median_of(alone), with = median_of(beside);
    const double pipelined = plain > 0 ? with / plain - 1 : 0;
    worst_overhead = std::max(worst_overhead, pipelined);
    std::printf("%-12s %10.2f %10.2f %12.3f %8.2f%% %6.2f / %5.2f %+9.2f%% %11.2f %7s\n", spec.name().c_str(),
                state_bytes / 1e6, step, snap, 100 * overhead, plain, with, 100 * pipelined, persist, ok ? "ok" : "WRONG");
    char row[512];
    std::snprintf(row, sizeof row,
                  "%s{\"job\":\"%s\",\"state_mb\":%.3f,\"step_ms\":%.3f,\"snapshot_ms\":%.4f,\"overhead\":%.5f,"
                  "\"pipelined_plain_ms\":%.3f,\"pipelined_with_ms\":%.3f,\"pipelined_overhead\":%.5f,"
                  "\"persist_ms\":%.3f,\"ok\":%s}",
                  first ? "" : ",", spec.name().c_str(), state_bytes / 1e6, step, snap, overhead, plain, with, pipelined,
                  persist, ok ? "true" : "false");
    json += row;
    first = false;
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  json += "],\"worst_overhead\":" + std::to_string(worst_overhead) + "}\n";
  std::printf("\non path: the copy made before the step goes on; pipelined: step ms without / with a copy running beside\n"
              "it (as a run takes it), and what the copy adds\n"
              "bar (snapshot every step <= 3.5%% of the step, pipelined): %s (worst %+.2f%%)\n",
              worst_overhead <= 0.035 ? "met" : "NOT met", 100 * worst_overhead);
  const auto parent = std::filesystem::path(json_path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (!(std::ofstream(json_path) << json)) {
    std::fprintf(stderr, "troupe bench checkpoint: cannot write %s\n", json_path.c_str());
    return 1;
  }
  std::printf("json: %s\n", json_path.c_str());
  if (!all_ok) std::fprintf(stderr, "troupe bench checkpoint: a checkpoint did not read back or restore exactly\n");
  return all_ok ? 0 : 1;
}

}  // namespace

}  // namespace troupe
