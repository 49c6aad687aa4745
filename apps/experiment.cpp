// troupe experiment stragglers: the Fashion-MNIST MLP 784-256-128-64-10 trained by 4 workers
// (batch 64 each) through parameter shards, under every update rule and four straggler
// profiles. Worker compute is emulated (policy.sample_ms: a calibrated time per example,
// real forward and backward included), so 4 workers on a 2-core machine behave like 4
// devices; the output says so. Parameters are snapshotted every half second and
// evaluated on the 10000 test images after each run, so evaluation costs the run nothing.
// Prints per profile: time to the target accuracy, accuracy at a fixed time budget, final
// accuracy, updates/s, mean staleness, worker throughput; writes a JSON file, one plot of
// test accuracy over wall-clock time per profile, and each run's metrics.
#include "apps/experiment.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "actors/ps_job.hpp"
#include "apps/experiment_common.hpp"
#include "policies/update_rule.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/plot.hpp"
#include "runtime/threads.hpp"

namespace troupe {

namespace {

using experiment::fmt;
using experiment::parse_number;
using experiment::split_list;

struct profile {
  std::string name, description, stragglers_json;
};

const std::vector<profile>& profiles() {
  static const std::vector<profile> p = {
      {"none", "no straggler", ""},
      {"slow3x", "worker 3 always 3x slower", R"([{"worker": 3, "slowdown": 3}])"},
      {"exp0.5", "every worker: exponential extra delay, mean 0.5 step",
       R"([{"worker": 0, "exp_delay": 0.5}, {"worker": 1, "exp_delay": 0.5}, {"worker": 2, "exp_delay": 0.5},
           {"worker": 3, "exp_delay": 0.5}])"},
      {"spike5x", "every worker: a step 5x slower with probability 0.2",
       R"([{"worker": 0, "spike_factor": 5, "spike_prob": 0.2}, {"worker": 1, "spike_factor": 5, "spike_prob": 0.2},
           {"worker": 2, "spike_factor": 5, "spike_prob": 0.2}, {"worker": 3, "spike_factor": 5, "spike_prob": 0.2}])"},
  };
  return p;
}

// The local rules: no gradients pushed, so no policy.lr_scaling.
bool local_rule(const std::string& rule) { return rule == "local-sgd" || rule == "diloco"; }

// Each rule's knob as the experiment sets it.
std::string rule_knobs(const std::string& rule, uint32_t steal_micro_batches) {
  if (rule == "backup") return R"(, "backup": 1)";
  if (rule == "k-async") return R"(, "k": 2)";
  if (rule == "ssp") return R"(, "staleness": 3)";
  if (rule == "dc-asgd") return R"(, "dc_lambda": 0.04)";
  if (local_rule(rule)) return R"(, "sync_every": 10)";
  if (rule == "balanced") return R"(, "balance_every": 5)";
  if (rule == "stealing") return R"(, "steal_micro_batches": )" + std::to_string(steal_micro_batches);
  if (rule == "dc-asgd-a") return R"(, "dc_adaptive": true)";
  return "";
}

// The update rules, "balanced" (sync with speed-proportional batch sizes), "stealing"
// (sync with micro-batch work stealing) and "dc-asgd-a" (dc-asgd's adaptive variant).
std::vector<std::string> experiment_policies() {
  std::vector<std::string> p = update_rule_names();
  p.insert(p.begin() + 1, {"balanced", "stealing"});
  p.insert(std::find(p.begin(), p.end(), "dc-asgd") + 1, "dc-asgd-a");
  return p;
}

// The update rule a policy of the experiment runs.
std::string rule_of(const std::string& policy) {
  if (policy == "balanced" || policy == "stealing") return "sync";
  return policy == "dc-asgd-a" ? "dc-asgd" : policy;
}

struct flags {
  double sample_ms = 0.15, budget_s = 12, max_s = 120, target = 0.88, snapshot_s = 0.5;
  uint32_t epochs = 8, seed = 1337, repeats = 1;
  uint32_t steal_micro_batches = 16;  // "stealing": four micro-batches of 16 per worker
  std::vector<std::string> rules = experiment_policies(), profile_names;
  std::string out_dir = "runs/experiment_stragglers";
  // policy.lr_scaling of the gradient rules; "auto": see lr_scaling_of.
  std::string lr_scaling = "auto";
};

// --lr-scaling auto: Adam's square-root rule for every gradient rule but staleness-lr, whose
// rule already divides the learning rate by the staleness (about workers - 1 when all are
// asynchronous, so about the batch share a second scaling would divide by again).
std::string lr_scaling_of(const flags& f, const std::string& rule) {
  if (f.lr_scaling != "auto") return f.lr_scaling;
  return rule == "staleness-lr" ? "none" : "sqrt";
}

struct run_result {
  std::string profile, rule;
  std::vector<double> t, acc;  // snapshots
  double time_to_target = -1, acc_at_budget = 0, final_acc = 0, seconds = 0;
  double updates_per_s = 0, staleness = 0, samples_per_s = 0, mb_per_step = 0;
  int64_t worker_steps = 0, dropped = 0;
  bool capped = false;
  // --repeats: every run's time to target (-1: not reached), final accuracy and samples/s;
  // the fields above are then their medians (the curve is the first run's).
  std::vector<double> all_time, all_final, all_samples;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n == 0 ? 0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One row from the repeats of a cell: medians, with "not reached" as later than any time.
run_result median_of(const std::vector<run_result>& runs) {
  run_result m = runs.front();
  auto med = [&](auto field) {
    std::vector<double> v;
    for (const run_result& r : runs) v.push_back(field(r));
    return median(v);
  };
  const double never = 1e30;
  const double tt = med([&](const run_result& r) { return r.time_to_target < 0 ? never : r.time_to_target; });
  m.time_to_target = tt >= never / 2 ? -1 : tt;
  m.acc_at_budget = med([](const run_result& r) { return r.acc_at_budget; });
  m.final_acc = med([](const run_result& r) { return r.final_acc; });
  m.seconds = med([](const run_result& r) { return r.seconds; });
  m.updates_per_s = med([](const run_result& r) { return r.updates_per_s; });
  m.staleness = med([](const run_result& r) { return r.staleness; });
  m.samples_per_s = med([](const run_result& r) { return r.samples_per_s; });
  m.dropped = int64_t(med([](const run_result& r) { return double(r.dropped); }));
  m.capped = std::any_of(runs.begin(), runs.end(), [](const run_result& r) { return r.capped; });
  for (const run_result& r : runs) {
    m.all_time.push_back(r.time_to_target);
    m.all_final.push_back(r.final_acc);
    m.all_samples.push_back(r.samples_per_s);
  }
  return m;
}

run_result run_one(const flags& f, const profile& p, const std::string& rule,
                   const std::shared_ptr<const training_data>& data, uint32_t repeat) {
  const std::string dir =
      f.out_dir + "/" + p.name + "_" + rule + (f.repeats > 1 ? "_" + std::to_string(repeat + 1) : "");
  const std::string json = R"({"name": "stragglers_)" + p.name + "_" + rule + R"(",
    "model": {"mlp": {"widths": [784, 256, 128, 64, 10], "activation": "relu"}},
    "data": {"dataset": "fashion_mnist"},
    "optimizer": {"adamw": {"lr": 2e-3, "weight_decay": 0}, "lr_schedule": "cosine"},
    "train": {"batch_size": 256, "epochs": )" + std::to_string(f.epochs) +
                           R"(, "threads": 1, "seed": )" + std::to_string(f.seed) + R"(, "metrics_file": ")" + dir +
                           R"(/metrics.jsonl"},
    "policy": {"name": ")" + rule_of(rule) + R"(", "workers": 4, "shards": 2, "sample_ms": )" + std::to_string(f.sample_ms) +
                           R"(, "time_limit_s": )" + std::to_string(f.max_s) + rule_knobs(rule, f.steal_micro_batches) +
                           (local_rule(rule) ? "" : R"(, "lr_scaling": ")" + lr_scaling_of(f, rule) + "\"") +
                           (p.stragglers_json.empty() ? "" : R"(, "stragglers": )" + p.stragglers_json) + "}}";
  const proto::JobSpec spec = parse_job_spec(json, "experiment stragglers");
  std::filesystem::remove_all(dir);
  const int64_t steps = total_steps(spec, *data);
  progress_log metrics(spec, steps, progress_display::quiet);
  ps_options opts;
  opts.snapshot_every_s = f.snapshot_s;
  opts.progress = &metrics;
  if (!spec.policy().has_sync_every()) {  // the local rules keep every worker in step anyway
    opts.worker_step_limit = 4 * steps;  // equal work: 4 workers x steps gradients, however shared
    opts.stop_after_pushes = 4 * steps;
  }
  set_compute_threads(1);
  ps_outcome o = run_ps_training(spec, data, opts);

  run_result r;
  r.profile = p.name;
  r.rule = rule;
  r.seconds = o.seconds;
  r.capped = o.time_limited;
  r.updates_per_s = o.updates_per_s();
  r.staleness = o.mean_staleness();
  r.worker_steps = o.worker_steps;
  r.samples_per_s = o.seconds > 0 ? double(o.samples) / o.seconds : 0;
  r.mb_per_step = o.worker_steps ? double(o.bytes) / 1e6 / double(o.worker_steps) * 4 : 0;
  for (const shard_stats& s : o.shards) r.dropped += s.dropped;
  // Evaluation after the run, on every core: the snapshots' test accuracy over time.
  set_compute_threads(hardware_threads());
  trainer eval(spec, steps);
  batch test = batch_source(spec, data).eval_set();
  for (const ps_snapshot& snap : o.snapshots) {
    o.assemble(snap, eval.params());
    const double acc = eval.evaluate(test.x, test.y, 2000).accuracy;
    r.t.push_back(snap.t);
    r.acc.push_back(acc);
    if (snap.t <= f.budget_s) r.acc_at_budget = acc;
    if (r.time_to_target < 0 && acc >= f.target) r.time_to_target = snap.t;
    metrics.record("{\"event\":\"snapshot\",\"t\":" + std::to_string(snap.t) + ",\"version\":" +
                   std::to_string(snap.version) + ",\"worker_steps\":" + std::to_string(snap.worker_steps) +
                   ",\"test_accuracy\":" + std::to_string(acc) + "}");
  }
  r.final_acc = r.acc.empty() ? 0 : r.acc.back();
  return r;
}

}  // namespace

int experiment_main(const std::vector<std::string>& args) {
  const char* usage =
      "usage: troupe experiment stragglers [--policies LIST] [--profiles LIST] [--epochs N] [--sample-ms MS]\n"
      "                                    [--budget S] [--max-s S] [--target ACC] [--repeats N]\n"
      "                                    [--lr-scaling auto|none|linear|sqrt] [--steal-micro-batches M]\n"
      "                                    [--out DIR]\n";
  if (!args.empty() && args[0] == "diloco") return experiment_diloco_main(args);
  if (args.empty() || args[0] != "stragglers") {
    std::fprintf(stderr, "%s       troupe experiment diloco [--workers LIST] [--sync-every LIST] [--steps N] ...\n", usage);
    return 2;
  }
  flags f;
  for (const profile& p : profiles()) f.profile_names.push_back(p.name);
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool v = i + 1 < args.size();
    double x = 0;
    if (a == "--policies" && v) {
      f.rules = split_list(args[++i]);
      for (const std::string& r : f.rules)
        if (const auto known = experiment_policies(); std::find(known.begin(), known.end(), r) == known.end()) {
          std::fprintf(stderr, "troupe experiment stragglers: --policies: unknown policy '%s'\n", r.c_str());
          return 2;
        }
    } else if (a == "--profiles" && v) {
      f.profile_names = split_list(args[++i]);
      for (const std::string& n : f.profile_names)
        if (std::none_of(profiles().begin(), profiles().end(), [&](const profile& p) { return p.name == n; })) {
          std::fprintf(stderr, "troupe experiment stragglers: --profiles: unknown profile '%s' (none, slow3x, exp0.5, spike5x)\n",
                       n.c_str());
          return 2;
        }
    } else if (a == "--epochs" && v) {
      if (!parse_number("stragglers", a, args[++i], 1, 100, x)) return 2;
      f.epochs = uint32_t(x);
    } else if (a == "--sample-ms" && v) {
      if (!parse_number("stragglers", a, args[++i], 0.01, 100, f.sample_ms)) return 2;
    } else if (a == "--budget" && v) {
      if (!parse_number("stragglers", a, args[++i], 0.5, 3600, f.budget_s)) return 2;
    } else if (a == "--max-s" && v) {
      if (!parse_number("stragglers", a, args[++i], 1, 36000, f.max_s)) return 2;
    } else if (a == "--target" && v) {
      if (!parse_number("stragglers", a, args[++i], 0.1, 1, f.target)) return 2;
    } else if (a == "--lr-scaling" && v) {
      f.lr_scaling = args[++i];
      if (f.lr_scaling != "auto" && f.lr_scaling != "none" && f.lr_scaling != "linear" && f.lr_scaling != "sqrt") {
        std::fprintf(stderr, "troupe experiment stragglers: --lr-scaling: unknown '%s' (auto, none, linear, sqrt)\n",
                     f.lr_scaling.c_str());
        return 2;
      }
    } else if (a == "--steal-micro-batches" && v) {
      // The batch is 4 workers x 64: M must be a multiple of 4 that divides 256.
      if (!parse_number("stragglers", a, args[++i], 4, 256, x)) return 2;
      if (x != std::floor(x) || 256 % int(x) != 0 || int(x) % 4 != 0) {
        std::fprintf(stderr, "troupe experiment stragglers: --steal-micro-batches: %s is not a multiple of the 4 "
                     "workers dividing the batch of 256 (4, 8, 16, 32, 64, 128, 256)\n", args[i].c_str());
        return 2;
      }
      f.steal_micro_batches = uint32_t(x);
    } else if (a == "--repeats" && v) {
      if (!parse_number("stragglers", a, args[++i], 1, 20, x)) return 2;
      f.repeats = uint32_t(x);
    } else if (a == "--out" && v) {
      f.out_dir = args[++i];
    } else {
      std::fprintf(stderr, "troupe experiment stragglers: unknown or incomplete flag '%s'\n%s", a.c_str(), usage);
      return 2;
    }
  }
  try {
    std::filesystem::create_directories(f.out_dir);
    const proto::JobSpec probe = parse_job_spec(R"({"model": {"mlp": {"widths": [784, 256, 128, 64, 10]}},
      "data": {"dataset": "fashion_mnist"}, "optimizer": {"adamw": {"lr": 2e-3}}, "train": {"batch_size": 256, "steps": 1}})",
                                                "experiment stragglers");
    auto data = load_training_data(probe);
    std::printf("experiment stragglers: Fashion-MNIST MLP 784-256-128-64-10, 4 workers x batch 64, 2 parameter shards,\n"
                "AdamW lr 2e-3 cosine (policy.lr_scaling %s), %u epochs of work per run (4 x steps gradients,\n"
                "shared as the policy lets the workers; cut at %.0f s)\n"
                "NOTE: worker compute is EMULATED: a step lasts %.2f ms per example x the straggler factor (real\n"
                "      forward+backward included), so 4 workers on this %d-core machine behave like 4 devices.\n"
                "      Test accuracy from parameter snapshots every %.1f s, evaluated after each run.\n\n",
                f.lr_scaling == "auto" ? "sqrt; staleness-lr none" : f.lr_scaling.c_str(), f.epochs, f.max_s, f.sample_ms, hardware_threads(), f.snapshot_s);
    std::vector<run_result> all;
    for (const std::string& pn : f.profile_names) {
      const profile& p = *std::find_if(profiles().begin(), profiles().end(), [&](const profile& x) { return x.name == pn; });
      std::printf("profile %s: %s\n", p.name.c_str(), p.description.c_str());
      std::printf("  %-13s %12s %10s %9s %10s %10s %11s %9s %8s\n", "policy", "to 88% (s)", "acc@budget", "final acc",
                  "updates/s", "staleness", "samples/s", "dropped", "run (s)");
      std::vector<plot_series> series;
      double sync_time = -1;  // sync's time to the target under this profile
      // Repeats go round the policies, so a slow minute of the machine hits them all alike.
      std::vector<std::vector<run_result>> cell(f.rules.size());
      for (uint32_t rep = 0; rep < f.repeats; ++rep) {
        if (f.repeats > 1) std::printf("  (repeat %u of %u)\n", rep + 1, f.repeats);
        for (size_t k = 0; k < f.rules.size(); ++k) {
          std::fflush(stdout);
          cell[k].push_back(run_one(f, p, f.rules[k], data, rep));
          if (rep + 1 < f.repeats) continue;
          all.push_back(median_of(cell[k]));
          const run_result& r = all.back();
          const std::string& rule = f.rules[k];
          if (rule == "sync") sync_time = r.time_to_target;
          std::string tt = r.time_to_target < 0 ? "not reached" : fmt(r.time_to_target, "%.1f");
          if (rule != "sync" && r.time_to_target > 0 && sync_time > 0)
            tt += fmt(sync_time / r.time_to_target, " (%.2fx)");
          std::printf("  %-13s %12s %10.4f %9.4f %10.1f %10.2f %11.0f %9lld %8.1f%s\n", rule.c_str(), tt.c_str(),
                      r.acc_at_budget, r.final_acc, r.updates_per_s, r.staleness, r.samples_per_s,
                      (long long)r.dropped, r.seconds, r.capped ? " (cut)" : "");
          series.push_back(plot_series{rule, r.t, r.acc});
        }
      }
      const std::string svg = f.out_dir + "/stragglers_" + p.name + ".svg";
      write_line_plot_svg(svg, "test accuracy over time, profile " + p.name + " (" + p.description + ")", "wall-clock s",
                          "test accuracy", series);
      std::printf("  (x): times faster to %.0f%% than sync; acc@budget at %.0f s;%s plot: %s\n\n", f.target * 100,
                  f.budget_s, f.repeats > 1 ? fmt(f.repeats, " medians of %.0f runs;").c_str() : "", svg.c_str());
    }
    // The issue's bars, where this sitting ran what they need.
    auto find = [&](const std::string& prof, const std::string& rule) -> const run_result* {
      for (const run_result& r : all)
        if (r.profile == prof && r.rule == rule) return &r;
      return nullptr;
    };
    if (const run_result* s3 = find("slow3x", "sync")) {
      const run_result* best = nullptr;
      for (const run_result& r : all)
        if (r.profile == "slow3x" && r.rule != "sync" && r.time_to_target > 0 &&
            (!best || r.time_to_target < best->time_to_target))
          best = &r;
      if (best && s3->time_to_target > 0)
        std::printf("check: slow3x: %s reaches %.0f%% %.2fx sooner than sync (bar >= 1.3x): %s\n", best->rule.c_str(),
                    f.target * 100, s3->time_to_target / best->time_to_target,
                    s3->time_to_target / best->time_to_target >= 1.3 ? "met" : "NOT met");
      else
        std::printf("check: slow3x: no time-to-target ratio (a run did not reach %.0f%%)\n", f.target * 100);
    }
    if (const run_result* s0 = find("none", "sync")) {
      for (const run_result& r : all)
        if (r.profile == "none" && r.rule != "sync")
          std::printf("check: none: %-12s throughput %.3fx sync's (bar >= 0.98): %s\n", r.rule.c_str(),
                      r.samples_per_s / s0->samples_per_s, r.samples_per_s >= 0.98 * s0->samples_per_s ? "met" : "NOT met");
    }
    for (const std::string& prof : f.profile_names)
      for (const char* rule : {"staleness-lr", "dc-asgd", "dc-asgd-a"})
        if (const run_result *r = find(prof, rule), *s0 = find(prof, "sync"); r && s0)
          std::printf("check: %s: %-12s final accuracy %.4f vs sync %.4f: %+.2f points (bar within 0.5): %s\n",
                      prof.c_str(), rule, r->final_acc, s0->final_acc, 100 * (r->final_acc - s0->final_acc),
                      std::abs(r->final_acc - s0->final_acc) <= 0.005 ? "met" : "NOT met");
    std::string json = "{\"experiment\":\"stragglers\",\"repeats\":" + std::to_string(f.repeats) +
                       ",\"lr_scaling\":\"" + f.lr_scaling + "\"" +
                       ",\"steal_micro_batches\":" + std::to_string(f.steal_micro_batches) +
                       ",\"sample_ms\":" + std::to_string(f.sample_ms) +
                       ",\"emulated_compute\":true,\"budget_s\":" + std::to_string(f.budget_s) +
                       ",\"target\":" + std::to_string(f.target) + ",\"runs\":[";
    for (size_t i = 0; i < all.size(); ++i) {
      const run_result& r = all[i];
      json += std::string(i ? "," : "") + "{\"profile\":\"" + r.profile + "\",\"policy\":\"" + r.rule +
              "\",\"time_to_target_s\":" + std::to_string(r.time_to_target) + ",\"acc_at_budget\":" +
              std::to_string(r.acc_at_budget) + ",\"final_acc\":" + std::to_string(r.final_acc) +
              ",\"updates_per_s\":" + std::to_string(r.updates_per_s) + ",\"mean_staleness\":" +
              std::to_string(r.staleness) + ",\"samples_per_s\":" + std::to_string(r.samples_per_s) +
              ",\"mb_per_step\":" + std::to_string(r.mb_per_step) + ",\"dropped\":" + std::to_string(r.dropped) +
              ",\"worker_steps\":" + std::to_string(r.worker_steps) + ",\"seconds\":" + std::to_string(r.seconds) +
              ",\"cut\":" + (r.capped ? "true" : "false");
      json += ",\"lr_scaling\":\"" + (local_rule(r.rule) ? std::string("n/a") : lr_scaling_of(f, r.rule)) + "\"";
      if (f.repeats > 1) {
        auto list = [](const std::vector<double>& v, const char* spec) {
          std::string out = "[";
          for (size_t k = 0; k < v.size(); ++k) out += std::string(k ? "," : "") + fmt(v[k], spec);
          return out + "]";
        };
        json += ",\"runs_time_to_target_s\":" + list(r.all_time, "%.2f") + ",\"runs_final_acc\":" +
                list(r.all_final, "%.4f") + ",\"runs_samples_per_s\":" + list(r.all_samples, "%.0f");
      }
      json += ",\"curve\":[";
      for (size_t k = 0; k < r.t.size(); ++k)
        json += std::string(k ? "," : "") + "[" + fmt(r.t[k], "%.3f") + "," + fmt(r.acc[k], "%.4f") + "]";
      json += "]}";
    }
    json += "]}\n";
    const std::string jp = f.out_dir + "/stragglers.json";
    if (!(std::ofstream(jp) << json)) throw input_error("--out: cannot write '" + jp + "'");
    std::printf("json: %s; metrics per run: %s/<profile>_<policy>/metrics.jsonl\n", jp.c_str(), f.out_dir.c_str());
    return 0;
  } catch (const input_error& e) {
    std::fprintf(stderr, "troupe experiment stragglers: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace troupe
