#include "actors/run_job.hpp"

#include <unistd.h>

#include <algorithm>
#include <numeric>
#include <chrono>
#include <sstream>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "actors/elastic_job.hpp"
#include "actors/elastic_pipeline.hpp"
#include "actors/pipeline_job.hpp"
#include "actors/ps_job.hpp"
#include "policies/elastic_membership.hpp"  // elastic_view: the launcher's word on a lost process
#include "runtime/threads.hpp"
#include "transport/collectives.hpp"
#include "transport/shm/shm.hpp"  // shm_peer_count
#include "transport/tcp/store.hpp"
#include "transport/tcp/tcp.hpp"
#include "transport/transports.hpp"

namespace troupe {

tcp_options process_link_options(const coordinator_options& opts) {
  tcp_options base;
  base.group = opts.group;
  base.host = opts.host;
  if (const char* secret = std::getenv("TROUPE_SECRET")) base.secret = secret;
  // How long a silent link may stay up (tcp_options::silence): TROUPE_SILENCE_MS.
  base.silence = env_milliseconds("TROUPE_SILENCE_MS", base.silence, 100, 3600000);
  base.heartbeat = std::min(base.heartbeat, base.silence / 4);
  // How long a process waits for the others to join (tcp_options::connect_deadline):
  // TROUPE_CONNECT_MS; troupe launch --nodes raises it, since nodes are started by hand.
  base.connect_deadline = env_milliseconds("TROUPE_CONNECT_MS", base.connect_deadline, 100, 86400000);
  if (base.secret.empty())
    throw input_error("train: a job of " + std::to_string(opts.world) +
                      " processes needs the job's secret in TROUPE_SECRET (troupe launch makes one)");
  return base;
}

std::shared_ptr<rendezvous> process_store(const coordinator_options& opts, const tcp_options& base,
                                          std::shared_ptr<tcp_store_server>& server) {
  if (opts.rendezvous.rfind("tcp://", 0) == 0) {
    auto [host, port] = parse_store_address(opts.rendezvous);
    if (opts.rank == 0 && opts.serve_store && !opts.elastic_join)
      server = std::make_shared<tcp_store_server>(host, port, base.secret);
    return std::make_shared<tcp_rendezvous>(host, port, base.secret);
  }
  return std::make_shared<file_rendezvous>(opts.rendezvous);
}

void report_evaluation(const proto::JobSpec& spec, std::shared_ptr<const training_data> data, const trainer& whole,
                       progress_log& progress, job_outcome& out) {
  batch ev = batch_source(spec, data).eval_set();
  eval_result r = whole.evaluate(ev.x, ev.y, spec.train().batch_size());
  out.eval = eval_report{r.loss, r.accuracy, r.count};
  progress.eval(r.loss, r.accuracy, r.count);
  if (spec.model().has_gpt() && spec.train().sample_tokens() > 0)
    out.sample = whole.generate("\n", int(spec.train().sample_tokens()), spec.train().seed());
  progress.finish();
}

void evaluate_assembled(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                        const pipeline_outcome& po, progress_log& progress, job_outcome& out) {
  set_compute_threads(int(spec.train().threads()));
  trainer whole(spec, out.steps);
  const param_table& table = whole.net().table;
  for (size_t i = 0; i < table.entries().size(); ++i)
    whole.params().get(int(i)).copy_from(po.params.at(table.entries()[i].name));
  report_evaluation(spec, data, whole, progress, out);
}

split split_processes(int world, int replicas, int stages) {
  split out;
  out.world_r = std::gcd(world, replicas);
  out.world_s = world / out.world_r;
  if (stages % out.world_s != 0)
    throw input_error("train: parallel.replicas " + std::to_string(replicas) + " x parallel.stages " +
                      std::to_string(stages) + " cannot be split over " + std::to_string(world) +
                      " processes: expected a process count that is a divisor of the replicas times a divisor of "
                      "the stages");
  return out;
}

joined join_processes(const proto::JobSpec& spec, const coordinator_options& opts, pipeline_options& popts,
                      bool quiet_placement, std::chrono::milliseconds connect_deadline) {
  const split sp = split_processes(opts.world, popts.replicas, popts.stages);
  const int kr = opts.rank / sp.world_s, ks = opts.rank % sp.world_s;
  const int R = popts.replicas, L = R / sp.world_r, f = kr * L;
  const int P = popts.stages, LS = P / sp.world_s, fs = ks * LS;
  tcp_options base = process_link_options(opts);
  if (connect_deadline.count() > 0) base.connect_deadline = std::min(base.connect_deadline, connect_deadline);
  // tcp://HOST:PORT: rank 0 serves the store there (hosts without a shared directory);
  // anything else is a directory all the processes see.
  joined out;
  std::shared_ptr<rendezvous> store = process_store(opts, base, out.server);
  // Where this process is, for rank 0's placement table; the control group's links are up
  // only once every process has joined, so then every one has said where it is.
  const std::string where_key = "job/" + std::to_string(opts.group) + "/where/";
  store->set(where_key + std::to_string(opts.rank), opts.host + " " + std::to_string(::getpid()) + " " +
                                                        std::to_string(f) + " " + std::to_string(L) + " " +
                                                        std::to_string(fs) + " " + std::to_string(LS));
  const std::string transport = spec.parallel().transport();
  const bool shm = transport == "shm";
  out.control = join_group(transport, opts.rank, opts.world, *store, base);
  std::shared_ptr<communicator> control = out.control;
  if (opts.rank == 0 && !opts.quiet && !quiet_placement) {
    std::printf("placement: %d processes, %d replica%s x %d stage%s each; %s\n", opts.world, L, L == 1 ? "" : "s",
                LS, LS == 1 ? "" : "s",
                shm ? ("shared memory to " + std::to_string(shm_peer_count(*control)) + " of " +
                       std::to_string(opts.world - 1) + " processes, tcp to the rest")
                          .c_str()
                    : (transport + " between processes").c_str());
    for (int k = 0; k < opts.world; ++k) {
      std::string host, pid;
      int first = 0, count = 0, first_stage = 0, stages = 0;
      std::istringstream line(store->get(where_key + std::to_string(k), base.connect_deadline));
      line >> host >> pid >> first >> count >> first_stage >> stages;
      std::printf("  process %-3d host %-15s pid %-8s replicas %d..%d stages %d..%d\n", k, host.c_str(), pid.c_str(),
                  first, first + count - 1, first_stage, first_stage + stages - 1);
    }
    std::fflush(stdout);
  }
  popts.first_replica = f;
  popts.local_replicas = L;
  if (sp.world_s > 1) {
    // The processes holding the other stages of these replicas: ranks ks of world_s.
    popts.first_stage = fs;
    popts.local_stages = LS;
    tcp_options o = base;
    o.group = base.group + 1 + uint64_t(P) + uint64_t(kr);
    popts.pipe = join_group(transport, ks, sp.world_s, *store, o);
  }
  // Without train.threads, each process uses its own machine's cores for its own stage
  // actors (train.threads, when set, is the whole job's, as on one host).
  if (!spec.train().threads()) {
    const int local_devices = popts.devices ? popts.devices / R * L : LS * L;
    popts.threads_per_device = std::max(1, hardware_threads() / local_devices);
  }
  popts.make_replica_group = [store, base, R, L, f, transport](int stage) {
    tcp_options o = base;
    o.group = base.group + 1 + uint64_t(stage);  // one group per stage
    std::vector<int> ranks;
    for (int k = 0; k < L; ++k) ranks.push_back(f + k);
    return join_group_ranks(transport, ranks, R, *store, o);
  };
  popts.global_loss = [control, L, R](int64_t step, float local) {
    float v = local * float(L);
    allreduce_sum(*control, &v, 1, uint64_t(step) * kTagsPerCollective);
    return v / float(R);
  };
  return out;
}

namespace {

// A resume needs steps after its checkpoint's.
void require_steps_left(const checkpoint_version& v, int64_t steps) {
  if (v.step >= steps)
    throw input_error("--resume " + v.dir.string() + ": the checkpoint is at step " + std::to_string(v.step) +
                      ", the job has " + std::to_string(steps) + " steps: nothing is left to train");
}

// Workers and parameter shards (actors/ps_job.hpp); the final parameters are evaluated here.
job_outcome run_policy_job(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                           const coordinator_options& opts) {
  job_outcome out;
  out.steps = total_steps(spec, *data);
  if (spec.elastic().mode() == "respawn") check_ps_respawn(spec, opts.world);
  // troupe launch: this process's shards and workers; their actors talk to the other
  // processes' over one group of all of them.
  std::unique_ptr<ps_processes> procs;
  std::shared_ptr<tcp_store_server> server;
  if (opts.world > 1) {
    procs = std::make_unique<ps_processes>();
    procs->place = ps_placement::of(spec, opts.rank, opts.world);
    tcp_options base = process_link_options(opts);
    std::shared_ptr<rendezvous> store = process_store(opts, base, server);
    procs->group = join_group(spec.parallel().transport(), opts.rank, opts.world, *store, base);
    // The bridge's receivers wait for whatever comes next, in several threads per process:
    // polling before they sleep (shm's default, tuned for collectives) took a third of the
    // CPU from the workers. Measured, 4 workers x 2 shards over 2 processes on 2 cores:
    // 128 updates/s polling, 235 without.
    procs->group->spin = std::chrono::microseconds(0);
    if (spec.elastic().mode() == "respawn") {
      // The launcher's word on a failed link: a view without the process (the cluster
      // coordinator publishes one when it counts a process lost: its agent went down or
      // silent). Within two silences and 5 s, or it was a link between live processes.
      const auto wait = 2 * base.silence + std::chrono::seconds(5);
      procs->confirm_lost = [store, group = opts.group, wait](int process) {
        const auto until = std::chrono::steady_clock::now() + wait;
        while (std::chrono::steady_clock::now() < until) {
          try {
            const std::string latest = store->get(elastic_key(group, "latest"), std::chrono::milliseconds(1));
            const elastic_view v =
                elastic_view::decode(store->get(elastic_key(group, "view/" + latest), std::chrono::seconds(1)));
            if (v.index_of(process) < 0) return true;
          } catch (const std::exception&) {  // not there yet, or the store is slow: ask again
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        return false;
      };
    }
    if (opts.rank == 0 && !opts.quiet) {
      std::printf("placement: %d processes over %s; worker w in process w %% %d, shard s in process s %% %d\n",
                  opts.world, spec.parallel().transport().c_str(), opts.world, opts.world);
      std::fflush(stdout);
    }
  }
  ps_options po;
  po.resume_from = opts.resume_from;
  if (opts.rank != 0) {  // process 0 reports, evaluates and writes the metrics
    run_ps_training(spec, data, po, procs.get());
    out.eval.loss = -1;
    return out;
  }
  progress_log progress(spec, out.steps, opts.display());
  po.announce_failures = !opts.quiet;
  po.progress = &progress;
  ps_outcome r = run_ps_training(spec, data, po, procs.get());
  set_compute_threads(int(spec.train().threads()));
  trainer whole(spec, out.steps);
  r.assemble(r.snapshots.back(), whole.params());
  report_evaluation(spec, data, whole, progress, out);
  out.seconds = r.seconds;
  if (!opts.quiet) {
    int64_t dropped = 0;
    for (const shard_stats& st : r.shards) dropped += st.dropped;
    const bool local = spec.policy().has_sync_every();
    const std::string rounds = local ? " (a push per " + std::to_string(spec.policy().sync_every()) + " steps)" : "";
    std::printf("policy:    %s, %u workers, %u shard%s: %lld worker steps, %lld pushes%s, %lld updates (%.1f/s), "
                "%lld dropped, mean staleness %.2f, %.1f MB moved%s\n",
                spec.policy().name().c_str(), spec.policy().workers(), spec.policy().shards(),
                spec.policy().shards() == 1 ? "" : "s", (long long)r.worker_steps,
                (long long)(r.shards.empty() ? 0 : r.shards[0].pushes), rounds.c_str(),
                (long long)(r.shards.empty() ? 0 : r.shards[0].version), r.updates_per_s(), (long long)dropped,
                r.mean_staleness(), double(r.bytes) / 1e6, r.time_limited ? " (stopped at policy.time_limit_s)" : "");
    const uint32_t M = spec.policy().steal_micro_batches();
    if (M > 0 && !r.worker_samples.empty()) {
      std::printf("stealing:  %u micro-batches of %u examples a step; per worker examples trained "
                  "(micro-batches stolen / given):",
                  M, spec.train().batch_size() / M);
      for (size_t w = 0; w < r.worker_samples.size(); ++w)
        std::printf(" w%zu %lld (%lld/%lld)", w, (long long)r.worker_samples[w], (long long)r.stolen[w],
                    (long long)r.given[w]);
      std::printf("\n");
    }
    for (const std::string& f : r.failures) std::printf("failed:    %s\n", f.c_str());
    for (const std::string& m : r.moves) std::printf("moved:     %s\n", m.c_str());
  }
  return out;
}

}  // namespace

job_outcome run_job_worker(caf::actor_system& sys, const proto::JobSpec& spec, const coordinator_options& opts,
                           int64_t steps) {
  pipeline_options popts = pipeline_options::from(spec);
  joined links = join_processes(spec, opts, popts);  // kept up for the run
  auto t0 = std::chrono::steady_clock::now();
  run_pipeline_training(sys, spec, popts, steps, nullptr);
  job_outcome out;
  out.steps = steps;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.eval.loss = -1;  // rank 0 evaluates
  return out;
}

job_outcome run_job(const proto::JobSpec& spec, const coordinator_options& opts) {
  auto data = load_training_data(spec);  // bad data fails here, before any actor starts
  job_outcome out;
  out.steps = total_steps(spec, *data);
  if (out.steps == 0)
    throw input_error("train: the job has 0 steps (batch_size " + std::to_string(spec.train().batch_size()) +
                      " is larger than the training set)");
  const bool single = spec.policy().name() == "allreduce" && opts.world == 1 && spec.parallel().stages() == 1 &&
                      spec.parallel().replicas() == 1;
  if (spec.elastic().mode() != "off" && spec.policy().name() == "allreduce")
    return spec.parallel().stages() > 1 ? run_elastic_pipeline(spec, data, opts) : run_elastic_job(spec, data, opts);
  if (spec.policy().name() != "allreduce") {
    check_ps_checkpoints(spec, opts.resume_from.get());  // before the processes join
    if (opts.resume_from) require_steps_left(*opts.resume_from, out.steps);
    return run_policy_job(spec, data, opts);
  }
  // Checkpoints: the job in one piece ("device" shard), or its pipeline stages and
  // replicas in this process (a "stage-<s>" shard per stage, replica 0's copy).
  const bool in_process_pipeline = spec.policy().name() == "allreduce" && opts.world == 1 && !single;
  const int P = int(spec.parallel().stages());
  if ((spec.train().checkpoint_every() > 0 || opts.resume_from) && !single && !in_process_pipeline)
    throw input_error(std::string(opts.resume_from ? "--resume" : "train.checkpoint_every") +
                      ": checkpoints are taken by jobs in one process (troupe train) with the parallel section's "
                      "all-reduce or with parameter shards, and by troupe launch jobs of parameter shards or with "
                      "elastic.mode set");
  if (opts.resume_from) {
    const std::string dir = opts.resume_from->dir.string();
    const bool whole = opts.resume_from->shards.count("device") > 0;
    if (single && !whole)
      throw input_error("--resume " + dir + ": the checkpoint has no \"device\" shard" +
                        (opts.resume_from->shards.count("stage-0") ? " (a pipeline job's: it has stage-N shards; "
                                                                     "resume it with the same parallel.stages)"
                                                                   : ""));
    if (!single)
      for (int st = 0; st < P; ++st)
        if (!opts.resume_from->shards.count("stage-" + std::to_string(st)))
          throw input_error("--resume " + dir + ": the checkpoint has no \"stage-" + std::to_string(st) +
                            "\" shard for this job of " + std::to_string(P) + " stage" + (P == 1 ? "" : "s") +
                            (whole ? " (it is a job's of 1 stage x 1 replica)" : ""));
    require_steps_left(*opts.resume_from, out.steps);
    // Check it against this job's model and optimizer before any actor starts (a
    // pipeline's stages check theirs as they are built).
    if (single) trainer(spec, out.steps).restore(opts.resume_from->shards.at("device"));
  }
  caf::actor_system_config cfg;
  register_message_types(cfg);
  caf::actor_system sys{cfg};
  auto t0 = std::chrono::steady_clock::now();
  if (opts.world > 1) split_processes(opts.world, int(spec.parallel().replicas()), int(spec.parallel().stages()));
  if (opts.world > 1 && opts.rank != 0) return run_job_worker(sys, spec, opts, out.steps);
  if (spec.parallel().stages() > 1 || spec.parallel().replicas() > 1) {
    // Pipeline stages as actors; then the assembled model is evaluated here.
    progress_log progress(spec, out.steps, opts.display());
    pipeline_options popts = pipeline_options::from(spec);
    joined links;  // keeps the processes' links (and rank 0's store) up for the run
    if (opts.world > 1) links = join_processes(spec, opts, popts);
    popts.trace = std::make_shared<trace_recorder>();
    std::unique_ptr<checkpoint_writer> writer;
    if (const int every = int(spec.train().checkpoint_every()); every > 0) {
      // Phase 1 in the stages (a copy after their optimizer step), phase 2 here: replica
      // 0's copy of every stage, written in the background.
      popts.snapshots = std::make_shared<stage_snapshots>(every);
      writer = std::make_unique<checkpoint_writer>(spec.train().checkpoint_dir(), int(spec.train().checkpoint_keep()));
      popts.on_step = [snaps = popts.snapshots, w = writer.get(), P](int64_t done) {
        if (!snaps->due(done)) return;
        auto shards = w->reclaim();
        for (int st = 0; st < P; ++st)
          if (!snaps->copy(0, st, done, shards["stage-" + std::to_string(st)]))
            throw std::logic_error("checkpoint: stage " + std::to_string(st) + " has no snapshot of step " +
                                   std::to_string(done));
        w->submit(done, std::move(shards));
      };
    }
    if (opts.resume_from) {
      popts.first_step = opts.resume_from->step;
      for (int st = 0; st < P; ++st) popts.initial[st] = opts.resume_from->shards.at("stage-" + std::to_string(st));
    }
    // Tracks in replica-major order, so the timeline reads top to bottom.
    for (int r = popts.first_replica; r < popts.first_replica + (popts.local_replicas ? popts.local_replicas : popts.replicas); ++r)
      for (int s = popts.first_stage; s < popts.first_stage + (popts.local_stages ? popts.local_stages : popts.stages); ++s)
        popts.trace->track("replica " + std::to_string(r) + " stage " + std::to_string(s));
    pipeline_outcome po = run_pipeline_training(sys, spec, popts, out.steps, &progress);
    if (writer) writer->flush();  // every checkpoint taken is on disk before the job reports its end
    out.peak_stash_mb = po.peak_stash_mb;
    evaluate_assembled(spec, data, po, progress, out);
    std::string dir = std::filesystem::path(spec.train().metrics_file()).parent_path().string();
    if (dir.empty()) dir = ".";
    try {
      popts.trace->write_chrome_trace(dir + "/trace.json");
      int64_t last = out.steps - 1;
      popts.trace->write_timeline_svg(dir + "/timeline.svg",
                                      spec.name() + ": steps " + std::to_string(std::max<int64_t>(0, last - 1) + 1) +
                                          "-" + std::to_string(last + 1) + ", " + spec.parallel().schedule(),
                                      std::max<int64_t>(0, last - 1), last);
      out.trace_path = dir + "/trace.json";
      out.timeline_path = dir + "/timeline.svg";
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe: warning: %s\n", e.what());
    }
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
  }
  auto coord = sys.spawn(coordinator, spec, data, opts);
  caf::scoped_actor self{sys};
  std::string failure;
  self->request(coord, caf::infinite, run_atom::value)
      .receive(
          [&](const eval_report& ev, const std::string& sample) {
            out.eval = ev;
            out.sample = sample;
          },
          [&](const caf::error& err) { failure = sys.render(err); });
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!failure.empty()) throw std::runtime_error("job failed: " + failure);
  return out;
}

}  // namespace troupe
