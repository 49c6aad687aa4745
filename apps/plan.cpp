#include "apps/plan.hpp"

#include <algorithm>
#include <cstdio>
#include <set>  // distinct parameter names per stage
#include <sstream>

#include "policies/pipeline_schedule.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/partition.hpp"
#include "runtime/threads.hpp"
#include "runtime/stage_model.hpp"

namespace troupe {

std::vector<stage_plan> plan_job(const proto::JobSpec& spec) {
  const auto& par = spec.parallel();
  auto schedule = make_pipeline_schedule(par.schedule(), par.has_chunks() ? int(par.chunks()) : 2);
  const int p = int(par.stages()), v = schedule->chunks(), m = int(par.micro_batches());
  std::unique_ptr<model> full = build_model(spec.model());
  arena params(full->table);
  init_params(*full, params, spec.train().seed());
  auto ranges = plan_virtual_stages(*full, p * v);

  // One micro-batch of real data through the whole model, keeping every layer's stash.
  auto data = load_training_data(spec);
  batch b = batch_source(spec, data).next();
  int64_t rows = b.x.dim(0) / (m * int64_t(par.replicas()));
  activations acts;
  forward(*full, params, b.x.slice_rows(0, rows), b.y.slice_rows(0, rows), acts);

  const double mb = 1.0 / (1024.0 * 1024.0);
  const double opt_factor = spec.optimizer().has_adamw() ? 2.0 : 1.0;  // AdamW m, v; SGD momentum
  std::vector<stage_plan> plan;
  for (int s = 0; s < p; ++s) {
    stage_plan sp;
    sp.stage = s;
    std::set<std::string> names;
    for (int c = 0; c < v; ++c) {
      auto [first, last] = ranges[size_t(c * p + s)];
      double chunk_bytes = 0;
      for (size_t i = first; i < last; ++i) {
        sp.layers.push_back(full->layers[i]->name());
        chunk_bytes += saved_bytes(acts.stashes[i]);
        param_table t;
        full->layers[i]->declare(t);
        for (const auto& e : t.entries())
          if (names.insert(e.name).second) sp.params += e.numel();
      }
      sp.stash_mb_per_micro = std::max(sp.stash_mb_per_micro, chunk_bytes * mb);
    }
    sp.param_mb = double(sp.params) * 4 * mb;
    sp.grad_mb = sp.param_mb;
    sp.optimizer_mb = sp.param_mb * opt_factor;
    sp.peak_stash = schedule->peak_stash_formula(s, p, m);
    sp.peak_activation_mb = sp.peak_stash * sp.stash_mb_per_micro;
    plan.push_back(sp);
  }
  // declare() above re-assigned the layers' indices into scratch tables; the model is
  // not used again.
  return plan;
}

std::string format_plan(const proto::JobSpec& spec, const std::vector<stage_plan>& plan) {
  std::ostringstream os;
  const auto& par = spec.parallel();
  char line[512];
  std::snprintf(line, sizeof line,
                "plan: %d stage%s x %d replica%s, schedule %s, %d micro-batch%s of %d rows per step and replica\n",
                int(par.stages()), par.stages() == 1 ? "" : "s", int(par.replicas()), par.replicas() == 1 ? "" : "s",
                par.schedule().c_str(), int(par.micro_batches()), par.micro_batches() == 1 ? "" : "es",
                int(spec.train().batch_size() / (par.micro_batches() * par.replicas())));
  os << line;
  if (par.replicas() > 1) os << "      (every replica holds the same stages; memory below is per stage actor)\n";
  std::snprintf(line, sizeof line, "%-5s %-34s %10s %-8s %9s %9s %9s %6s %11s %11s\n", "stage", "layers", "params",
                "device", "param MB", "grad MB", "optim MB", "stash", "MB/micro", "peak act MB");
  os << line;
  const int p = int(par.stages()), R = int(par.replicas()), D = int(par.devices());
  for (const auto& sp : plan) {
    std::string layers;
    for (size_t i = 0; i < sp.layers.size(); ++i) layers += (i ? "," : "") + sp.layers[i];
    if (layers.size() > 34) layers = layers.substr(0, 31) + "...";
    std::string devices;  // the device of this stage in each replica
    for (int r = 0; r < R; ++r) {  // appended piecewise: `const char* + string` trips GCC 12's -Wrestrict
      if (r) devices += ',';
      devices += std::to_string(device_of(sp.stage, r, p, R, D));
    }
    if (devices.size() > 8) devices = devices.substr(0, 5) + "...";
    std::snprintf(line, sizeof line, "%-5d %-34s %10lld %-8s %9.2f %9.2f %9.2f %6d %11.2f %11.2f\n", sp.stage,
                  layers.c_str(), (long long)sp.params, devices.c_str(), sp.param_mb, sp.grad_mb, sp.optimizer_mb,
                  sp.peak_stash, sp.stash_mb_per_micro, sp.peak_activation_mb);
    os << line;
  }
  const int devices = D ? D : p * R;
  const int threads = spec.train().threads() ? int(spec.train().threads()) : hardware_threads();
  std::snprintf(line, sizeof line, "        %d device actor%s (device column: one per replica) x %d compute thread%s each\n",
                devices, devices == 1 ? "" : "s", std::max(1, threads / devices),
                std::max(1, threads / devices) == 1 ? "" : "s");
  os << line;
  return os.str();
}

int plan_main(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "troupe plan: expected one job file (usage: troupe plan JOB.json)\n");
    return 2;
  }
  try {
    proto::JobSpec spec = load_job_spec(args[0]);
    std::printf("troupe: %s\n%s", describe(spec).c_str(), format_plan(spec, plan_job(spec)).c_str());
    return 0;
  } catch (const input_error& e) {
    std::fprintf(stderr, "troupe: error: %s\n", e.what());
    return 1;
  }
}

}  // namespace troupe
