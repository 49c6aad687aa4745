#include "actors/pipeline_job.hpp"

#include <algorithm>
#include <mutex>
#include <sstream>

#include "actors/data_feeder.hpp"
#include "actors/device.hpp"
#include "actors/pipeline_coordinator.hpp"
#include "actors/remote_stage.hpp"
#include "runtime/partition.hpp"
#include "runtime/threads.hpp"
#include "transport/collectives.hpp"
#include "transport/communicator.hpp"

namespace troupe {

pipeline_options pipeline_options::from(const proto::JobSpec& spec) {
  pipeline_options o;
  o.stages = int(spec.parallel().stages());
  o.replicas = int(spec.parallel().replicas());
  o.micro_batches = int(spec.parallel().micro_batches());
  o.schedule = spec.parallel().schedule();
  o.chunks = spec.parallel().has_chunks() ? int(spec.parallel().chunks()) : 2;
  o.devices = int(spec.parallel().devices());
  int threads = spec.train().threads() ? int(spec.train().threads()) : hardware_threads();
  o.threads_per_device = std::max(1, threads / (o.devices ? o.devices : o.stages * o.replicas));
  return o;
}

namespace {

// Stages in several processes: pipe rank 0 gets every parameter (its own stages' it has);
// the others send theirs, as a list of "name d0,d1,.." lines, then each tensor's bytes.
void gather_params(communicator& pipe, pipeline_outcome& out) {
  constexpr uint64_t tag = kPipeCollectiveTags - 8;
  if (pipe.rank() != 0) {
    std::string list;
    for (const auto& [name, t] : out.params) {
      list += name + " ";
      for (size_t d = 0; d < t.shape().size(); ++d) {
        if (d) list += ',';
        list += std::to_string(t.shape()[d]);
      }
      list += "\n";
    }
    const int64_t n = int64_t(list.size());
    pipe.send(0, tag, &n, sizeof n, dtype::u8);
    pipe.send(0, tag, list.data(), list.size(), dtype::u8);
    for (const auto& [name, t] : out.params) pipe.send(0, tag, t.raw(), t.bytes(), dtype::u8);
    return;
  }
  for (int q = 1; q < pipe.size(); ++q) {
    int64_t n = 0;
    pipe.recv(q, tag, &n, sizeof n, dtype::u8);
    if (n < 0 || n > (int64_t(1) << 30)) throw std::runtime_error("gather_params: a list of " + std::to_string(n) + " bytes");
    std::string list(size_t(n), '\0');
    pipe.recv(q, tag, list.data(), list.size(), dtype::u8);
    std::istringstream lines(list);
    std::string name, dims;
    while (lines >> name >> dims) {
      shape_t shape;
      std::istringstream each(dims);
      for (std::string d; std::getline(each, d, ',');) shape.push_back(std::stoll(d));
      tensor t = tensor::empty(shape);
      pipe.recv(q, tag, t.raw(), t.bytes(), dtype::u8);
      out.params.emplace(name, std::move(t));  // a tied parameter: the copies are equal
    }
  }
}

}  // namespace

namespace {

// The model as the pipeline cuts it: the whole model's initial parameters (the seed's), and
// the layer ranges of the p x v virtual stages, balanced by cost.
struct model_cut {
  std::unique_ptr<model> full;
  arena init;  // refers to full's table
  std::vector<std::pair<size_t, size_t>> ranges;
  int p = 1, v = 1;
  // Stage s's chunks: virtual stages s, s + p, ...
  std::vector<std::pair<size_t, size_t>> chunks_of(int s) const {
    std::vector<std::pair<size_t, size_t>> mine;
    for (int c = 0; c < v; ++c) mine.push_back(ranges[size_t(c * p + s)]);
    return mine;
  }
};

model_cut cut_model(const proto::JobSpec& spec, const std::function<std::unique_ptr<model>()>& make_model, int p, int v) {
  model_cut out;
  out.full = make_model();
  out.init = arena(out.full->table);
  init_params(*out.full, out.init, spec.train().seed());
  out.ranges = plan_virtual_stages(*out.full, p * v);
  out.p = p;
  out.v = v;
  return out;
}

std::function<std::unique_ptr<model>()> model_maker(const proto::JobSpec& spec, const pipeline_options& opts) {
  if (opts.make_model) return opts.make_model;
  return [&spec] { return build_model(spec.model()); };
}

}  // namespace

std::unique_ptr<stage_model> build_stage_model(const proto::JobSpec& spec, const pipeline_options& opts, int stage) {
  const int p = opts.stages, v = make_pipeline_schedule(opts.schedule, opts.chunks)->chunks();
  if (stage < 0 || stage >= p) throw std::logic_error("build_stage_model: stage " + std::to_string(stage) + " of " + std::to_string(p));
  const auto make_model = model_maker(spec, opts);
  const model_cut cut = cut_model(spec, make_model, p, v);
  return std::make_unique<stage_model>(spec, make_model(), cut.chunks_of(stage), cut.init, nullptr, opts.micro_batches, 0);
}

pipeline_outcome run_pipeline_training(caf::actor_system& sys, const proto::JobSpec& spec, const pipeline_options& opts,
                                       int64_t steps, progress_log* progress) {
  std::shared_ptr<const pipeline_schedule> schedule = make_pipeline_schedule(opts.schedule, opts.chunks);
  const int p = opts.stages, v = schedule->chunks(), m = opts.micro_batches, R = opts.replicas;
  // This process's replicas: [f, f + L) of R.
  const int f = opts.first_replica, L = opts.local_replicas ? opts.local_replicas : R;
  if (f < 0 || L < 1 || f + L > R || (L < R && !opts.make_replica_group))
    throw input_error("pipeline: replicas [" + std::to_string(f) + ", " + std::to_string(f + L) + ") of " +
                      std::to_string(R) + " with" + (opts.make_replica_group ? "" : "out") +
                      " a replica group spanning the processes");
  // This process's stages: [fs, fs + LS) of p.
  const int fs = opts.first_stage, LS = opts.local_stages ? opts.local_stages : p;
  if (fs < 0 || LS < 1 || fs + LS > p || (LS < p && (!opts.pipe || opts.pipe->size() * LS != p ||
                                                      opts.pipe->rank() * LS != fs)))
    throw input_error("pipeline: stages [" + std::to_string(fs) + ", " + std::to_string(fs + LS) + ") of " +
                      std::to_string(p) + " without a pipe group of one process per " + std::to_string(LS) +
                      " stages");
  if (LS < p && opts.devices)
    throw input_error("pipeline: parallel.devices cannot be set when the stages are split over processes");
  auto local = [&](int s) { return s >= fs && s < fs + LS; };
  auto data = load_training_data(spec);
  auto batches = std::make_shared<step_batches>(spec, data, m, R);
  const int64_t total = troupe::total_steps(spec, *data);
  if (opts.first_step < 0 || opts.first_step > steps)
    throw input_error("pipeline: going on from step " + std::to_string(opts.first_step) + " of a run of " +
                      std::to_string(steps) + " steps");
  if (opts.first_step > 0 || !opts.initial.empty())
    for (int s = fs; s < fs + LS; ++s)
      if (!opts.initial.count(s))
        throw checkpoint_error("pipeline: no state for stage " + std::to_string(s) + " to go on from after step " +
                               std::to_string(opts.first_step) + " (a checkpoint of " +
                               std::to_string(opts.initial.size()) + " stage" + (opts.initial.size() == 1 ? "" : "s") +
                               " for a job of " + std::to_string(p) + "?)");
  batches->skip(opts.first_step);

  const auto make_model = model_maker(spec, opts);
  // The whole model once, for its layer costs and its initial parameters.
  const model_cut cut = cut_model(spec, make_model, p, v);
  // Every local stage's compute, with the state it goes on from, before any actor starts
  // (a stage that cannot load its state must not leave the others running).
  std::map<std::pair<int, int>, std::shared_ptr<stage_compute>> computes;  // (stage, replica)
  for (int s = fs; s < fs + LS; ++s)
    for (int r = f; r < f + L; ++r) {
      auto c = std::make_shared<stage_model>(spec, make_model(), cut.chunks_of(s), cut.init, batches, m, r);
      if (auto st = opts.initial.find(s); st != opts.initial.end())
        c->load_state(st->second, "stage " + std::to_string(s) + "'s state");
      computes[{s, r}] = std::move(c);
    }

  // The device actors (threads), then stages[r][s]: stage s of replica r, on device
  // device_of(s, r). Stage s of every replica shares one group.
  check_placement(p, R, opts.devices);
  const int local_devices = opts.devices ? opts.devices / R * L : LS * L;
  std::vector<caf::actor> devices;
  for (int d = 0; d < local_devices; ++d)
    devices.push_back(sys.spawn<caf::detached>(stage_device, opts.threads_per_device));
  // The local replicas' stage lists: every slot of another process's stage is a
  // remote_stage (filled in below).
  std::vector<std::vector<caf::actor>> stages(static_cast<size_t>(L), std::vector<caf::actor>(size_t(p)));
  std::vector<std::shared_ptr<communicator>> groups;  // one member of each stage's group
  std::vector<caf::actor> all;
  for (int s = 0; s < p; ++s) {
    if (!local(s)) continue;
    // Members f .. f+L-1 of stage s's group (all of it, in one process).
    std::vector<std::shared_ptr<communicator>> group;
    if (R > 1) group = opts.make_replica_group ? opts.make_replica_group(s) : make_group("inproc", R);
    if (R > 1 && int(group.size()) != (opts.make_replica_group ? L : R))
      throw std::logic_error("make_replica_group gave " + std::to_string(group.size()) + " members for " +
                             std::to_string(L) + " local replicas");
    auto member = [&](int r) { return group[size_t(opts.make_replica_group ? r - f : r)]; };
    if (R > 1) groups.push_back(member(f));
    for (int r = f; r < f + L; ++r) {
      stage_config cfg;
      cfg.stage = s;
      cfg.stages = p;
      cfg.replica = r;
      cfg.micro_batches = m;
      cfg.device = devices[size_t(LS < p ? (r - f) * LS + (s - fs)
                                         : device_of(s, r - f, p, L, opts.devices ? local_devices : 0))];
      cfg.schedule = schedule;
      cfg.replica_group = R > 1 ? member(r) : nullptr;
      cfg.trace = opts.trace;
      // Nothing to share with other stages: each replica's stage steps on its own.
      cfg.self_step = p == 1;
      cfg.max_norm = spec.optimizer().grad_clip();
      cfg.lr_at = [opt = spec.optimizer(), total](int64_t step) { return learning_rate(opt, step, total); };
      cfg.bucket_elems = opts.bucket_elems;
      if (opts.trace) {
        std::string name = "replica " + std::to_string(r) + " stage " + std::to_string(s);
        cfg.track = opts.trace->track(name);
        if (R > 1) cfg.comm_track = opts.trace->track(name + " comm");
      }
      cfg.compute = computes.at({s, r});
      cfg.snapshots = r == f ? opts.snapshots : nullptr;  // replicas hold the same state: one copy
      if (r == f && opts.on_grads) cfg.on_grads = [fn = opts.on_grads, s](int64_t step, const tensor& g) { fn(s, step, g); };
      if (opts.wrap_compute) cfg.compute = opts.wrap_compute(s, r, cfg.compute);
      cfg.fed = true;  // the data feeder sends the examples; the device gathers the rows
      stages[size_t(r - f)][size_t(s)] = sys.spawn<caf::detached>(stage, cfg);
      all.push_back(stages[size_t(r - f)][size_t(s)]);
    }
  }
  std::vector<caf::actor> proxies;
  if (LS < p) {
    for (int q = 0; q < opts.pipe->size(); ++q) {
      if (q == opts.pipe->rank()) continue;
      auto link = std::make_shared<std::mutex>();
      for (int r = f; r < f + L; ++r) {
        proxies.push_back(sys.spawn<caf::detached>(remote_stage, opts.pipe, q, r, link));
        for (int s = q * LS; s < (q + 1) * LS; ++s) stages[size_t(r - f)][size_t(s)] = proxies.back();
      }
    }
  }
  // The data feeder: to the first stage (inputs) and the last (targets) of each local
  // replica (it draws every replica's share, as one trainer would, and sends these).
  std::vector<std::vector<caf::actor>> readers(static_cast<size_t>(R));
  for (int r = f; r < f + L; ++r) {
    if (local(0)) readers[size_t(r)].push_back(stages[size_t(r - f)].front());
    if (p > 1 && local(p - 1)) readers[size_t(r)].push_back(stages[size_t(r - f)].back());
  }
  pipeline_graph graph;
  graph.stages = stages;
  graph.devices = devices;
  graph.groups = groups;
  graph.feeder = sys.spawn<caf::detached>(pipeline_feeder, batches, readers, opts.first_step);
  graph.first_step = opts.first_step;
  graph.on_step = opts.on_step;
  graph.before_update = opts.before_update;
  graph.after_sum = opts.after_sum;
  graph.micro_batches = m;
  graph.steps = steps;
  graph.total_steps = total;
  graph.spec = &spec;
  graph.progress = progress;
  graph.global_loss = opts.global_loss;
  graph.first_replica = f;
  if (LS < p) {
    graph.first_stage = fs;
    graph.local_stages = LS;
    graph.pipe = opts.pipe;
    graph.proxies = proxies;
  }
  graph.out = std::make_shared<pipeline_outcome>();
  auto out = graph.out;
  caf::actor graph_feeder = graph.feeder;
  caf::actor coordinator = sys.spawn<caf::detached>(pipeline_coordinator, std::move(graph));
  // Messages from the other processes' stages, to this one's.
  std::unique_ptr<pipe_inlets> inlets;
  if (LS < p)
    inlets = std::make_unique<pipe_inlets>(
        opts.pipe,
        [stages, f, L, local](int replica, int stage) {
          return replica >= f && replica < f + L && local(stage) ? stages[size_t(replica - f)][size_t(stage)]
                                                                 : caf::actor{};
        },
        p, R,
        [coordinator](const std::string& why) {
          stage_report r;
          r.error = why;
          caf::anon_send(coordinator, r);
        });
  std::string failure;
  caf::scoped_actor self{sys};
  self->request(coordinator, caf::infinite, run_atom::value)
      .receive([](int32_t) {},
               [&](caf::error& e) {
                 // The coordinator's own words where it gave them, CAF's rendering otherwise.
                 const caf::message& why = e.context();
                 failure = why.size() == 1 && why.match_element<std::string>(0) ? why.get_as<std::string>(0)
                                                                                 : sys.render(e);
               });
  if (inlets && failure.empty()) {
    inlets->close();
    gather_params(*opts.pipe, *out);
  }
  inlets.reset();  // after a failure: aborts the pipe group, so the other processes hear now
  // Done or failed, the graph goes away (a failing coordinator has already stopped it).
  for (auto& st : all) self->send_exit(st, caf::exit_reason::user_shutdown);
  for (auto& st : proxies) self->send_exit(st, caf::exit_reason::user_shutdown);
  for (auto& d : devices) self->send_exit(d, caf::exit_reason::user_shutdown);
  self->send_exit(graph_feeder, caf::exit_reason::user_shutdown);
  self->send_exit(coordinator, caf::exit_reason::user_shutdown);
  if (!failure.empty()) throw std::runtime_error(failure);
  return *out;
}

}  // namespace troupe
