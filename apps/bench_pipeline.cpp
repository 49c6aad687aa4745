// troupe bench pipeline: stage actors with emulated compute (sleeping for the configured
// forward, input-gradient and weight-gradient times; a schedule that does not split
// backward sleeps for both parts at once) run each schedule for p in {2,3,4} stages and m in
// {p,2p,4p,8p} micro-batches. Prints the measured bubble next to the schedule's formula
// and the peak stash of every stage next to its formula; fails (exit 1) if a bubble is
// more than 0.02 off for m >= 2p or a stash count differs.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "actors/pipeline_run.hpp"
#include "apps/bench.hpp"
#include "policies/pipeline_sim.hpp"

namespace troupe {

int bench_pipeline_main(const std::vector<std::string>& args) {
  double fwd_ms = 4, bwd_ms = 4, wgt_ms = 4;
  int steps = 3;
  std::string json_path = "runs/bench_pipeline.json";
  for (size_t i = 0; i < args.size(); ++i) {
    bool has_value = i + 1 < args.size();
    if ((args[i] == "--fwd-ms" || args[i] == "--bwd-ms" || args[i] == "--wgt-ms") && has_value) {
      double v = std::atof(args[i + 1].c_str());
      if (!(v >= 0.1 && v <= 1000)) {
        std::fprintf(stderr, "troupe bench pipeline: %s expects milliseconds in [0.1, 1000], got '%s'\n",
                     args[i].c_str(), args[i + 1].c_str());
        return 2;
      }
      (args[i] == "--fwd-ms" ? fwd_ms : args[i] == "--bwd-ms" ? bwd_ms : wgt_ms) = v;
      ++i;
    } else if (args[i] == "--steps" && has_value) {
      steps = std::atoi(args[++i].c_str());
      if (steps < 1 || steps > 100) {
        std::fprintf(stderr, "troupe bench pipeline: --steps expects 1..100, got '%s'\n", args[i].c_str());
        return 2;
      }
    } else if (args[i] == "--json" && has_value) {
      json_path = args[++i];
    } else {
      std::fprintf(stderr,
                   "troupe bench pipeline: unknown argument '%s' (usage: troupe bench pipeline [--fwd-ms F] "
                   "[--bwd-ms B] [--wgt-ms W] [--steps N] [--json FILE])\n",
                   args[i].c_str());
      return 2;
    }
  }
  caf::actor_system_config cfg;
  register_message_types(cfg);
  caf::actor_system sys{cfg};
  auto us = [](double ms) { return std::chrono::microseconds(int64_t(ms * 1000)); };
  std::printf("troupe bench pipeline: emulated stages, per stage and micro-batch: forward %.2f ms, backward "
              "%.2f ms input gradient + %.2f ms weight gradient; median of %d step%s\n\n",
              fwd_ms, bwd_ms, wgt_ms, steps, steps == 1 ? "" : "s");
  std::printf("%-12s %2s %3s %9s %9s %7s  %-16s %-16s %s\n", "schedule", "p", "m", "bubble", "formula", "diff",
              "peak stash", "formula", "check");
  bool all_ok = true;
  std::string json = "{\"fwd_ms\":" + std::to_string(fwd_ms) + ",\"bwd_ms\":" + std::to_string(bwd_ms) +
                     ",\"wgt_ms\":" + std::to_string(wgt_ms) + ",\"rows\":[";
  bool first_row = true;
  for (const std::string& name : pipeline_schedule_names()) {
    std::shared_ptr<const pipeline_schedule> sched = make_pipeline_schedule(name);
    for (int p = 2; p <= 4; ++p)
      for (int m : {p, 2 * p, 4 * p, 8 * p}) {
        pipeline_measurement r = run_emulated_pipeline(sys, sched, p, m, us(fwd_ms), us(bwd_ms), us(wgt_ms), steps);
        double formula = sched->bubble_formula(p, m, {fwd_ms, bwd_ms, wgt_ms});
        std::string stash, stash_formula;
        bool stash_ok = true;
        for (int s = 0; s < p; ++s) {
          int want = sched->peak_stash_formula(s, p, m);
          if (s) stash += ',', stash_formula += ',';
          stash += std::to_string(r.peak_stash[size_t(s)]);
          stash_formula += std::to_string(want);
          stash_ok = stash_ok && want == r.peak_stash[size_t(s)];
        }
        double diff = r.bubble - formula;
        bool bubble_ok = m < 2 * p || std::abs(diff) <= 0.02;
        bool ok = bubble_ok && stash_ok;
        all_ok = all_ok && ok;
        std::printf("%-12s %2d %3d %9.4f %9.4f %+7.4f  %-16s %-16s %s\n", name.c_str(), p, m, r.bubble, formula, diff,
                    stash.c_str(), stash_formula.c_str(), ok ? (m < 2 * p ? "ok (m<2p: shown)" : "ok") : "FAIL");
        std::fflush(stdout);
        char row[512];
        std::snprintf(row, sizeof row,
                      "%s{\"schedule\":\"%s\",\"p\":%d,\"m\":%d,\"bubble\":%.5f,\"formula\":%.5f,\"makespan_s\":%.5f,"
                      "\"peak_stash\":[%s],\"stash_formula\":[%s],\"ok\":%s}",
                      first_row ? "" : ",", name.c_str(), p, m, r.bubble, formula, r.makespan_s, stash.c_str(),
                      stash_formula.c_str(), ok ? "true" : "false");
        json += row;
        first_row = false;
      }
  }
  json += "]}\n";
  auto dir = std::filesystem::path(json_path).parent_path();
  std::error_code ec;
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (!(std::ofstream(json_path) << json)) std::fprintf(stderr, "troupe bench pipeline: cannot write '%s'\n", json_path.c_str());
  std::printf("\njson: %s\n", json_path.c_str());
  if (!all_ok) std::fprintf(stderr, "troupe bench pipeline: a bubble or stash count is off its formula\n");
  return all_ok ? 0 : 1;
}

}  // namespace troupe
