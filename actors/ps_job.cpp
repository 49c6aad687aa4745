#include "actors/ps_job.hpp"

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "actors/actor_bridge.hpp"
#include "actors/param_shard.hpp"
#include "actors/ps_worker.hpp"
#include "runtime/optimizer.hpp"
#include "runtime/training.hpp"

namespace troupe {

namespace {

using snapshot_atom = caf::atom_constant<caf::atom("snapshot")>;
using timeup_atom = caf::atom_constant<caf::atom("timeup")>;
using clock_type = std::chrono::steady_clock;

struct ps_coordinator_state {
  proto::JobSpec spec;
  ps_options opts;
  ps_outcome* out = nullptr;
  progress_log* progress = nullptr;
  int64_t steps = 0;
  std::vector<caf::actor> shards, workers, standbys;  // standbys: elastic respawn, by shard
  int ended = 0;
  bool stopping = false, finishing = false;
  clock_type::time_point start;
  caf::response_promise done;
  // The log's steps: line k is every worker's step k, written once each worker still
  // running has passed it.
  struct log_step {
    double loss = 0, compute = 0;  // loss weighted by examples
    int64_t samples = 0, bytes = 0, stolen = 0, version = 0;
  };
  std::map<int64_t, log_step> unlogged;
  std::vector<int64_t> last_step;  // per worker: the last step it reported (-1: none)
  std::vector<bool> gone;          // per worker: ended, finished or failed
  bool failed_run = false;
  checkpoint_writer* writer = nullptr;                                // process 0 with train.checkpoint_every
  std::map<int64_t, std::map<std::string, checkpoint_shard>> copies;  // by version, until every shard's is in
  std::vector<int64_t> step_samples;                                  // examples reported for each worker step so far
  static inline const char* name = "ps_coordinator";
};

using coord_actor = caf::stateful_actor<ps_coordinator_state>;

// Threads, each joined by join_all (a std::thread still joinable when it goes would end
// the program).
class joined_threads {
 public:
  void add(std::thread t) {
    std::lock_guard<std::mutex> lock(mu_);
    threads_.push_back(std::move(t));
  }
  void join_all() {
    for (;;) {
      std::vector<std::thread> waiting;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (threads_.empty()) return;
        waiting.swap(threads_);
      }
      for (auto& t : waiting) t.join();
    }
  }

 private:
  std::mutex mu_;
  std::vector<std::thread> threads_;
};

std::chrono::microseconds micros(double seconds) { return std::chrono::microseconds(int64_t(seconds * 1e6)); }

double elapsed(const ps_coordinator_state& s) {
  return std::chrono::duration<double>(clock_type::now() - s.start).count();
}

void fail_run(coord_actor* self, const std::string& why);

// Asks shard k (xs...), `answered` takes the answer. A failed request fails the run, but
// where shards move (elastic respawn) it is asked again a few times first: the shard's
// stand-in holds it until the standby copy takes over.
template <class F, class... Ts>
void ask_shard(coord_actor* self, size_t k, F answered, int attempt, Ts... xs) {
  self->request(self->state.shards[k], caf::infinite, xs...).then(answered, [=](caf::error& err) {
    constexpr int kAttempts = 5;
    if (self->state.opts.shards_move && attempt + 1 < kAttempts)
      return ask_shard(self, k, answered, attempt + 1, xs...);
    fail_run(self, "shard " + std::to_string(k) + ": " + self->system().render(err));
  });
}

// Asks every shard for its parameters once its version reaches `at_version` (0: now);
// `then` gets the snapshot, timed when the last shard answers.
template <class F>
void take_snapshot(coord_actor* self, F then, int64_t at_version = 0) {
  auto snap = std::make_shared<ps_snapshot>();
  auto& s = self->state;
  snap->shards.resize(s.shards.size());
  auto left = std::make_shared<size_t>(s.shards.size());
  for (size_t k = 0; k < s.shards.size(); ++k)
    ask_shard(
        self, k,
        [=](int64_t version, const tensor& p) {
          snap->shards[k] = p;
          if (k == 0) snap->version = version;
          if (--*left > 0) return;
          snap->t = elapsed(self->state);
          snap->worker_steps = self->state.out->worker_steps;
          then(std::move(*snap));
        },
        0, params_atom::value, at_version);
}

void final_snapshot(coord_actor* self);

// The job cannot go on (a link to another process failed, or a shard did not answer):
// every worker and shard is stopped, and the run answers with `why`.
void fail_run(coord_actor* self, const std::string& why) {
  auto& s = self->state;
  if (s.failed_run) return;
  s.failed_run = true;
  const caf::error reason = caf::make_error(caf::sec::runtime_error, why);
  for (const caf::actor& w : s.workers) self->send_exit(w, reason);
  for (const caf::actor& sh : s.shards) self->send_exit(sh, reason);
  for (const caf::actor& sb : s.standbys) self->send_exit(sb, reason);
  if (s.done.pending()) s.done.deliver(reason);
  self->quit(reason);
}

void finish(coord_actor* self) {
  auto& s = self->state;
  if (s.finishing) return;
  s.finishing = true;
  s.out->seconds = elapsed(s);
  // The final parameters once every shard has seen every worker leave: across processes
  // a worker's last pushes travel another path than the news of its end.
  auto drained = std::make_shared<size_t>(s.shards.size());
  for (size_t k = 0; k < s.shards.size(); ++k)
    ask_shard(
        self, k,
        [=](drain_atom) {
          if (--*drained == 0) final_snapshot(self);
        },
        0, drain_atom::value);
}

void final_snapshot(coord_actor* self) {
  take_snapshot(self, [=](ps_snapshot snap) {
    auto& s = self->state;
    s.out->snapshots.push_back(std::move(snap));
    auto left = std::make_shared<size_t>(s.shards.size());
    s.out->shards.resize(s.shards.size());
    for (size_t k = 0; k < s.shards.size(); ++k)
      ask_shard(
          self, k,
          [=](const shard_stats& st) {
            auto& s = self->state;
            s.out->shards[k] = st;
            if (--*left > 0) return;
            if (s.progress) {
              for (const shard_stats& x : s.out->shards) {
                std::string hist;
                for (int64_t c : x.staleness) hist += (hist.empty() ? "" : ",") + std::to_string(c);
                char line[256];
                std::snprintf(line, sizeof line,
                              "{\"event\":\"shard\",\"shard\":%d,\"version\":%lld,\"pushes\":%lld,\"applied\":%lld,"
                              "\"dropped\":%lld,\"bytes_in\":%lld,\"bytes_out\":%lld,\"apply_s\":%.4f,\"staleness\":[",
                              x.shard, (long long)x.version, (long long)x.pushes, (long long)x.applied,
                              (long long)x.dropped, (long long)x.bytes_in, (long long)x.bytes_out, x.apply_s);
                s.progress->record(line + hist + "]}");
              }
            }
            for (const caf::actor& sh : s.shards) self->send_exit(sh, caf::exit_reason::user_shutdown);
            for (const caf::actor& sb : s.standbys) self->send_exit(sb, caf::exit_reason::user_shutdown);
            s.done.deliver(run_atom::value);
            self->quit();
          },
          0, stats_atom::value);
  });
}

// Writes the log's lines, in order, for the steps that every worker still running has
// passed (a worker's reports arrive in the order of its steps).
void log_ready(ps_coordinator_state& s) {
  for (auto it = s.unlogged.begin(); it != s.unlogged.end(); it = s.unlogged.erase(it)) {
    const int64_t k = it->first;
    for (size_t w = 0; w < s.gone.size(); ++w)
      if (!s.gone[w] && s.last_step[w] < k) return;
    const ps_coordinator_state::log_step& l = it->second;
    if (!s.progress) continue;
    char extra[240];
    std::snprintf(extra, sizeof extra, "\"policy\":\"%s\",\"version\":%lld,\"worker_steps\":%lld,\"bytes\":%lld%s",
                  s.spec.policy().name().c_str(), (long long)l.version, (long long)s.out->worker_steps,
                  (long long)l.bytes,
                  s.spec.policy().steal_micro_batches() > 0 ? (",\"stolen\":" + std::to_string(l.stolen)).c_str() : "");
    const int64_t step = std::min(k, s.steps - 1);
    s.progress->step(step, float(l.samples > 0 ? l.loss / double(l.samples) : 0.0),
                     learning_rate(s.spec.optimizer(), step, s.steps), 0, l.samples, 0, l.compute, extra);
  }
}

void on_report(coord_actor* self, const worker_report& r) {
  auto& s = self->state;
  ps_outcome& o = *s.out;
  if (size_t(r.step) >= o.step_loss.size())
    o.step_loss.resize(size_t(r.step) + 1, 0), o.step_workers.resize(size_t(r.step) + 1, 0);
  // Running mean over the workers of step k, weighted by their examples (slices differ
  // with speed-proportional batches and work stealing; a worker with none adds nothing).
  if (size_t(r.step) >= s.step_samples.size()) s.step_samples.resize(size_t(r.step) + 1, 0);
  ++o.step_workers[size_t(r.step)];
  int64_t& n = s.step_samples[size_t(r.step)];
  n += r.samples;
  if (n > 0)
    o.step_loss[size_t(r.step)] += (double(r.loss) - o.step_loss[size_t(r.step)]) * double(r.samples) / double(n);
  ++o.worker_steps;
  if (s.opts.stop_after_pushes > 0 && o.worker_steps == s.opts.stop_after_pushes && !s.stopping) {
    s.stopping = true;
    for (const caf::actor& w : s.workers) self->send_exit(w, caf::exit_reason::user_shutdown);
  }
  o.samples += r.samples;
  o.bytes += r.bytes;
  if (o.worker_samples.empty()) o.worker_samples.assign(s.workers.size(), 0), o.stolen = o.given = o.worker_samples;
  if (r.worker >= 0 && size_t(r.worker) < s.workers.size()) {
    o.worker_samples[size_t(r.worker)] += r.samples;
    o.stolen[size_t(r.worker)] += r.stolen;
    o.given[size_t(r.worker)] += r.given;
  }
  if (r.worker >= 0 && size_t(r.worker) < s.last_step.size())
    s.last_step[size_t(r.worker)] = std::max(s.last_step[size_t(r.worker)], r.step);
  ps_coordinator_state::log_step& l = s.unlogged[r.step];
  l.loss += double(r.loss) * double(r.samples);
  l.compute += r.compute_s;
  l.samples += r.samples;
  l.bytes += r.bytes;
  l.stolen += r.stolen;
  l.version = std::max(l.version, r.version);
  log_ready(s);
}

caf::behavior ps_coordinator(coord_actor* self, proto::JobSpec spec, ps_options opts, ps_outcome* out,
                             progress_log* progress, int64_t steps, checkpoint_writer* writer) {
  auto& s = self->state;
  s.spec = std::move(spec);
  s.writer = writer;
  s.opts = opts;
  s.out = out;
  s.progress = progress;
  s.steps = steps;
  return {
      [=](run_atom, const std::vector<caf::actor>& shards, const std::vector<caf::actor>& workers,
          const std::vector<caf::actor>& standbys) {
        auto& s = self->state;
        s.done = self->make_response_promise();
        const proto::PolicySpec& pol = s.spec.policy();
        s.shards = shards;
        s.workers = workers;
        s.standbys = standbys;
        for (const caf::actor& w : s.workers) self->monitor(w);
        s.last_step.assign(s.workers.size(), -1);
        s.gone.assign(s.workers.size(), false);
        self->set_down_handler([=](const caf::down_msg& dm) {
          auto& s = self->state;
          int32_t w = 0;
          while (size_t(w) < s.workers.size() && s.workers[size_t(w)].address() != dm.source) ++w;
          if (size_t(w) == s.workers.size()) return;
          s.gone[size_t(w)] = true;
          const bool failed = dm.reason && dm.reason != caf::exit_reason::user_shutdown && !s.stopping;
          if (failed) {
            s.out->failures.push_back("worker " + std::to_string(w) + ": " + self->system().render(dm.reason));
            if (s.opts.announce_failures)
              std::printf("\nworker %d failed (%s); the others go on without it\n", w,
                          self->system().render(dm.reason).c_str());
          }
          // A worker that finished has left every shard itself, after its last push (so
          // in every process its pushes arrive before its leave); one that was stopped
          // or failed leaves through the coordinator. Where shards move, every end goes
          // through it too (a leave may be lost with a shard's process; a worker there
          // ends only once its last push is in every shard, so this cannot overtake it).
          if (dm.reason || s.opts.shards_move)
            for (const caf::actor& sh : s.shards) self->send(sh, leave_atom::value, w);
          log_ready(s);
          if (++s.ended == int(s.workers.size())) finish(self);
        });
        s.start = clock_type::now();
        // Snapshots at given versions: asked for before any worker starts, so the shards
        // hold them until the versions come.
        for (int64_t v : s.opts.snapshot_versions)
          take_snapshot(
              self,
              [=](ps_snapshot snap) {
                if (!self->state.finishing) self->state.out->snapshots.push_back(std::move(snap));
              },
              v);
        for (const caf::actor& w : s.workers) self->send(w, start_atom::value);
        if (s.opts.snapshot_every_s > 0)
          self->delayed_send(self, micros(s.opts.snapshot_every_s), snapshot_atom::value);
        if (pol.time_limit_s() > 0) self->delayed_send(self, micros(pol.time_limit_s()), timeup_atom::value);
      },
      [=](const worker_report& r) { on_report(self, r); },
      [=](stop_atom, const std::string& why) { fail_run(self, why); },
      // Shard k's standby copy took over at `version` (elastic respawn): it hears again of
      // every worker that has left (a leave may have been lost with the shard's process).
      [=](moved_atom, int32_t shard, int64_t version) {
        auto& s = self->state;
        if (shard < 0 || size_t(shard) >= s.shards.size()) return;
        const std::string what =
            "shard " + std::to_string(shard) + " moved to its standby copy at version " + std::to_string(version);
        s.out->moves.push_back(what);
        if (s.opts.announce_failures) std::printf("\n%s; the job goes on\n", what.c_str());
        if (s.progress)
          s.progress->record("{\"event\":\"moved\",\"shard\":" + std::to_string(shard) +
                             ",\"version\":" + std::to_string(version) + "}");
        for (size_t w = 0; w < s.gone.size(); ++w)
          if (s.gone[w]) self->send(s.shards[size_t(shard)], leave_atom::value, int32_t(w));
      },
      [=](ckpt_atom, int32_t shard, int64_t version, checkpoint_shard& copy) {
        auto& s = self->state;
        if (!s.writer) return;
        auto& v = s.copies[version];
        v["shard-" + std::to_string(shard)] = std::move(copy);
        if (v.size() < s.shards.size()) return;
        s.writer->submit(version, std::move(v));  // phase 2, in the background
        // Older versions still missing a shard's copy never get it (lost with a process).
        s.copies.erase(s.copies.begin(), s.copies.upper_bound(version));
      },
      [=](snapshot_atom) {
        auto& s = self->state;
        if (s.finishing) return;
        take_snapshot(self, [=](ps_snapshot snap) {
          if (!self->state.finishing) self->state.out->snapshots.push_back(std::move(snap));
        });
        self->delayed_send(self, micros(s.opts.snapshot_every_s), snapshot_atom::value);
      },
      [=](timeup_atom) {
        auto& s = self->state;
        if (s.ended == int(s.workers.size())) return;
        s.stopping = true;
        s.out->time_limited = true;
        for (const caf::actor& w : s.workers) self->send_exit(w, caf::exit_reason::user_shutdown);
      },
  };
}

}  // namespace

double ps_outcome::mean_staleness() const {
  double n = 0, sum = 0;
  for (const shard_stats& s : shards)
    for (size_t t = 0; t < s.staleness.size(); ++t)
      n += double(s.staleness[t]), sum += double(t) * double(s.staleness[t]);
  return n > 0 ? sum / n : 0;
}

double ps_outcome::updates_per_s() const {
  return shards.empty() || seconds <= 0 ? 0 : double(shards[0].version) / seconds;
}

void ps_outcome::assemble(const ps_snapshot& snap, arena& whole) const {
  for (size_t k = 0; k < layouts.size(); ++k) copy_from_shard(snap.shards[k].f32(), *layouts[k], whole);
}

void check_ps_checkpoints(const proto::JobSpec& spec, const checkpoint_version* resume) {
  const proto::PolicySpec& pol = spec.policy();
  if ((spec.train().checkpoint_every() > 0 || resume) && pol.name() != "sync")
    throw input_error(std::string(resume ? "--resume" : "train.checkpoint_every") +
                      ": checkpoints of parameter-shard jobs take the synchronous rule (policy.name \"sync\", "
                      "where a version is a step every shard shares); got \"" +
                      pol.name() + "\"");
  if (!resume) return;
  for (uint32_t k = 0; k < pol.shards(); ++k)
    if (!resume->shards.count("shard-" + std::to_string(k)))
      throw input_error("--resume " + resume->dir.string() + ": the checkpoint has no \"shard-" + std::to_string(k) +
                        "\" for this job of " + std::to_string(pol.shards()) + " parameter shard" +
                        (pol.shards() == 1 ? "" : "s") +
                        (resume->shards.count("shard-0") ? "" : " (it is not a parameter-shard job's)"));
}

int ps_placement::shard_process(int shard) const { return shard % world; }
int ps_placement::worker_process(int worker) const { return worker % world; }
int ps_placement::standby_process(int shard) const { return (shard_process(shard) + 1) % world; }

void check_ps_respawn(const proto::JobSpec& spec, int world) {
  const proto::PolicySpec& pol = spec.policy();
  const std::string mode = "elastic.mode \"respawn\" of a parameter-shard job";
  if (pol.name() != "sync")
    throw input_error(mode +
                      " takes the synchronous rule (policy.name \"sync\"), whose shards' standby copies "
                      "replay each update; got \"" +
                      pol.name() + "\"");
  if (pol.balance_every() > 0 || pol.steal_micro_batches() > 0)
    throw input_error(mode + " keeps no copy of shard 0's batch shares or step members: leave out " +
                      std::string(pol.balance_every() > 0 ? "policy.balance_every" : "policy.steal_micro_batches"));
  if (world < 2)
    throw input_error(mode +
                      ": a job of one process has no other process to keep its shards' copies in; run it "
                      "with troupe launch --nproc N (N >= 2)");
}

ps_placement ps_placement::of(const proto::JobSpec& spec, int rank, int world) {
  const int W = int(spec.policy().workers()), S = int(spec.policy().shards());
  if (world > std::max(W, S))
    throw input_error(
        "policy.workers " + std::to_string(W) + " and policy.shards " + std::to_string(S) + " leave some of the " +
        std::to_string(world) + " processes with neither a worker nor a shard: expected at most " +
        std::to_string(std::max(W, S)) + " processes (worker w runs in process w % N, shard s in process s % N)");
  ps_placement p;
  p.rank = rank;
  p.world = world;
  return p;
}

ps_outcome run_ps_training(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                           const ps_options& opts, const ps_processes* procs) {
  const int64_t steps = total_steps(spec, *data);
  if (steps == 0) throw input_error("train: the job has 0 steps");
  const proto::PolicySpec& pol = spec.policy();
  const ps_placement place = procs ? procs->place : ps_placement{};
  const bool leader = place.rank == 0;
  ps_outcome out;
  caf::actor_system_config cfg;
  register_message_types(cfg);
  caf::actor_system sys{cfg};
  // Ids under which the processes know each other's actors.
  constexpr uint64_t kCoordinatorId = 1, kShardIds = uint64_t(1) << 20, kWorkerIds = uint64_t(2) << 20,
                     kStandbyIds = uint64_t(3) << 20;
  check_ps_checkpoints(spec, opts.resume_from.get());
  // elastic.mode "respawn": each shard has a standby copy in the next process.
  const bool shards_move = procs && spec.elastic().mode() == "respawn";
  if (shards_move) check_ps_respawn(spec, place.world);
  ps_options copts = opts;
  copts.shards_move = shards_move;
  const int64_t first_step = opts.resume_from ? opts.resume_from->step : 0;
  // Every process makes the same layouts and initial parameters from the spec's seed.
  auto net = build_model(spec.model());
  arena init(net->table);
  init_params(*net, init, spec.train().seed());
  if (opts.start_params.defined()) {
    if (opts.resume_from) throw input_error("a policy job starts from a checkpoint or from given parameters, not both");
    if (opts.start_params.type() != dtype::f32 || opts.start_params.numel() != net->table.total_numel())
      throw input_error("the parameters to start from hold " + std::to_string(opts.start_params.numel()) +
                        " values; this job's model has " + std::to_string(net->table.total_numel()) + " f32 values");
    init.flat().copy_from(opts.start_params);
  }
  out.layouts = shard_by_size(net->table, int(pol.shards()));
  // A checkpoint's shards are checked against their tables and optimizers before any actor
  // starts (an actor system does not end while one waits).
  if (opts.resume_from)
    for (const auto& l : out.layouts) {
      if (place.shard_process(l->index) != place.rank) continue;
      arena params(l->table);
      proto::OptimizerSpec o = spec.optimizer();
      make_update_rule(pol)->shard_optimizer(o);
      const std::string name = "shard-" + std::to_string(l->index);
      load_training_state(params, *make_optimizer(o, l->table), opts.resume_from->shards.at(name),
                          "--resume " + opts.resume_from->dir.string() + ": " + name);
    }
  std::unique_ptr<checkpoint_writer> writer;  // process 0: persists the shards' copies
  std::vector<caf::actor> local;              // this process's shards, standbys and workers, to wait for
  caf::actor coord;
  std::vector<caf::actor> shards, workers, standbys(out.layouts.size());
  std::map<int, caf::actor> own_standbys;  // by shard: the copies this process keeps
  std::string link_failure;
  std::mutex link_mu;
  // elastic respawn: where each shard is now (its process), the processes counted lost,
  // and the threads that wait for the launcher's word on a failed link (joined at the end).
  std::vector<int> shard_at(out.layouts.size());
  for (const auto& l : out.layouts) shard_at[size_t(l->index)] = place.shard_process(l->index);
  std::set<int> lost;
  joined_threads verdicts;
  std::unique_ptr<actor_bridge> bridge;  // after what its callback uses: destroyed before it
  // The job cannot go on: process 0's coordinator stops everything and answers, elsewhere
  // this process's actors stop.
  auto end_job = [&](const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(link_mu);
      if (!link_failure.empty()) return;
      link_failure = why;
    }
    if (leader)
      caf::anon_send(coord, stop_atom::value, why);
    else
      for (const caf::actor& a : local) caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
  };
  // elastic respawn: `process` is gone for good (the launcher's word). Every process works
  // out the same new places: each of its shards moves to its copy's process, and the copies
  // this process keeps take over (every other process is told, then each copy asks the
  // workers to push again). A shard with no live copy (moved already, or its copy's process
  // lost too) ends the job.
  auto process_lost = [&](int process) {
    std::lock_guard<std::mutex> lock(link_mu);
    if (!link_failure.empty()) return std::string();
    lost.insert(process);
    for (const auto& l : out.layouts) {
      const int k = l->index, keeper = place.standby_process(k);
      if (shard_at[size_t(k)] != process) continue;
      if (shard_at[size_t(k)] != place.shard_process(k))
        return "shard " + std::to_string(k) + " is lost: it had moved to its copy in process " +
               std::to_string(process) + ", which is lost too (a copy has no copy of its own)";
      if (lost.count(keeper))
        return "shard " + std::to_string(k) + " is lost: process " + std::to_string(process) +
               " held it and process " + std::to_string(keeper) + ", which held its copy, is lost too";
      shard_at[size_t(k)] = keeper;
      if (keeper != place.rank) continue;
      caf::actor copy = own_standbys.at(k);
      bridge->move(process, kShardIds + uint64_t(k), copy, kStandbyIds + uint64_t(k));
      caf::anon_send(copy, promote_atom::value, workers);
    }
    return std::string();
  };
  if (procs)
    bridge = std::make_unique<actor_bridge>(sys, procs->group, [&](int process, const std::string& why) {
      // elastic respawn: a failed link to a process other than the coordinator's is a lost
      // process only once the launcher says so (a link can fail between live processes);
      // meanwhile the stand-ins of its shards hold what is sent to them. The lost
      // process's workers' stand-ins are down: the coordinator counts them as failed.
      if (shards_move && process != 0) {
        verdicts.add(std::thread([&, process, why] {
          if (!procs->confirm_lost || !procs->confirm_lost(process))
            return end_job(why + "; the launcher has not counted process " + std::to_string(process) +
                           " lost, so a link between live processes failed, which the job cannot mend");
          std::fprintf(stderr, "troupe: process %d: %s; process %d is lost and the job goes on without it\n",
                       place.rank, why.c_str(), process);
          const std::string fatal = process_lost(process);
          if (!fatal.empty()) end_job(fatal);
        }));
        return;
      }
      end_job(why);  // without elasticity a lost link ends the job
    });
  // Whatever ends this function, the threads that use the bridge end before it does.
  struct join_first {
    joined_threads& t;
    ~join_first() { t.join_all(); }
  } verdicts_end{verdicts};
  if (leader) {
    if (spec.train().checkpoint_every() > 0)
      writer = std::make_unique<checkpoint_writer>(spec.train().checkpoint_dir(), int(spec.train().checkpoint_keep()));
    coord = sys.spawn<caf::detached>(ps_coordinator, spec, copts, &out, opts.progress, steps, writer.get());
    if (bridge) bridge->expose(kCoordinatorId, coord);
  } else {
    coord = bridge->remote(0, kCoordinatorId);
  }
  for (const auto& l : out.layouts) {
    const int owner = place.shard_process(l->index), keeper = shards_move ? place.standby_process(l->index) : -1;
    if (owner != place.rank) {
      if (shards_move) bridge->movable(owner, kShardIds + uint64_t(l->index));
      shards.push_back(bridge->remote(owner, kShardIds + uint64_t(l->index)));
    }
    if (keeper >= 0 && keeper != place.rank)
      standbys[size_t(l->index)] = bridge->remote(keeper, kStandbyIds + uint64_t(l->index));
    if (owner != place.rank && keeper != place.rank) continue;
    param_shard_config c;
    c.spec = spec;
    c.layout = l;
    c.initial = tensor::empty({l->table.total_numel()});
    copy_into_shard(init, *l, c.initial.f32());
    c.total_steps = steps;
    c.coordinator = coord;
    if (opts.resume_from)
      c.resume =
          std::make_shared<const checkpoint_shard>(opts.resume_from->shards.at("shard-" + std::to_string(l->index)));
    if (keeper == place.rank) {  // the standby copy: the same shard, without a copy of its own
      caf::actor copy = sys.spawn<caf::detached>(param_shard, c);
      standbys[size_t(l->index)] = copy;
      own_standbys[l->index] = copy;
      local.push_back(copy);
      bridge->expose(kStandbyIds + uint64_t(l->index), copy);
    }
    if (owner != place.rank) continue;
    if (keeper >= 0) c.standby = standbys[size_t(l->index)];
    shards.push_back(sys.spawn<caf::detached>(param_shard, std::move(c)));
    local.push_back(shards.back());
    if (bridge) bridge->expose(kShardIds + uint64_t(l->index), shards.back());
  }
  auto stragglers = std::make_shared<const straggler_injector>(pol, int(pol.workers()), spec.train().seed());
  std::vector<caf::actor> own_workers;
  for (int32_t w = 0; w < int32_t(pol.workers()); ++w) {
    const int owner = place.worker_process(w);
    if (owner != place.rank) {
      workers.push_back(bridge->remote(owner, kWorkerIds + uint64_t(w)));
      continue;
    }
    ps_worker_config c;
    c.spec = spec;
    c.data = data;
    c.worker = w;
    c.steps = opts.worker_step_limit > 0 ? opts.worker_step_limit : steps;
    c.first_step = first_step;
    c.total_steps = steps;
    c.layouts = out.layouts;
    c.shards = shards;
    c.coordinator = coord;
    c.stragglers = stragglers;
    c.shards_move = shards_move;
    workers.push_back(sys.spawn<caf::detached>(ps_worker, std::move(c)));
    own_workers.push_back(workers.back());
    local.push_back(workers.back());
    if (bridge) bridge->expose(kWorkerIds + uint64_t(w), workers.back());
  }
  // Each process gives its own workers the handles of every worker (the victims of
  // steals): local actors or stand-ins, which do not cross processes.
  for (const caf::actor& w : own_workers) caf::anon_send(w, peers_atom::value, workers);
  if (bridge) bridge->start();
  caf::scoped_actor self{sys};
  std::string failure;
  if (leader)
    self->request(coord, caf::infinite, run_atom::value, shards, workers,
                  shards_move ? standbys : std::vector<caf::actor>{})
        .receive([](run_atom) {}, [&](const caf::error& err) { failure = sys.render(err); });
  // The leader's coordinator has stopped the shards; elsewhere the run ends when this
  // process's shards and workers have.
  for (const caf::actor& a : local) self->monitor(a);
  for (size_t left = local.size(); left > 0; --left) self->receive([](const caf::down_msg&) {});
  if (writer) writer->flush();  // every checkpoint taken is on disk before the job reports its end
  verdicts.join_all();
  if (bridge) {
    bridge->close();
    std::lock_guard<std::mutex> lock(link_mu);
    if (!link_failure.empty()) failure = link_failure;  // the cause, not what it made fail
  }
  if (!failure.empty()) throw std::runtime_error("policy job failed: " + failure);
  return out;
}

}  // namespace troupe
