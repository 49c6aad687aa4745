#pragma once
// Runs one job to its end in a fresh actor system: the entry point for `troupe train`
// and for tests that check the whole path through the actors.
#include <string>
#include <vector>

#include "actors/coordinator.hpp"
#include "actors/pipeline_job.hpp"
#include "transport/rendezvous.hpp"
#include "transport/tcp/store.hpp"
#include "transport/tcp/tcp.hpp"

namespace troupe {

struct job_outcome {
  eval_report eval;
  std::string sample;  // generated text (GPT), empty otherwise
  double seconds = 0;
  int64_t steps = 0;
  std::string trace_path, timeline_path;  // pipeline runs: Chrome trace and timeline picture
  std::vector<double> peak_stash_mb;      // pipeline runs: measured activation peak per stage
};

// Throws input_error for bad data; returns the evaluation after the last step. With
// opts.world > 1 this is one process of the job: rank 0 reports, evaluates and writes
// the metrics, trace and pictures; the others train their replicas quietly.
job_outcome run_job(const proto::JobSpec& spec, const coordinator_options& opts);
// What a process of a multi-process job links with: its address, the job's secret
// (TROUPE_SECRET), the silence and connect deadlines (TROUPE_SILENCE_MS, TROUPE_CONNECT_MS).
tcp_options process_link_options(const coordinator_options& opts);
// The job's rendezvous store: a directory, or tcp://HOST:PORT (which rank 0 serves into
// `server` unless troupe launch does).
std::shared_ptr<rendezvous> process_store(const coordinator_options& opts, const tcp_options& base,
                                          std::shared_ptr<tcp_store_server>& server);
// How `world` processes split a job of `replicas` x `stages`: into world_r groups of
// replicas (as many as divide both) times world_s groups of stages (the rest, which must
// divide the stages). Process k holds replica group k / world_s and stage group
// k % world_s; the processes of one replica group are a pipeline, linked by its pipe
// group. input_error when the stages do not divide.
struct split {
  int world_r = 1, world_s = 1;
};
split split_processes(int world, int replicas, int stages);

// This process (opts.rank of opts.world) joins the job's other processes: a control group
// of `world` ranks (the step losses are averaged over it), replica groups per stage whose
// members are this process's replicas, and the pipe to the processes of its replicas'
// other stages, over parallel.transport (shm: shared memory with the processes of this
// host, tcp to the others; tcp: tcp only), with link groups opts.group + 1 ... opts.group
// + 1 + stages + replicas. Fills in popts' process fields; rank 0 prints the placement
// unless quiet_placement. connect_deadline > 0: at most that long for the links to form.
struct joined {
  std::shared_ptr<tcp_store_server> server;  // rank 0, with a tcp:// rendezvous
  std::shared_ptr<communicator> control;
};
joined join_processes(const proto::JobSpec& spec, const coordinator_options& opts, pipeline_options& popts,
                      bool quiet_placement = false,
                      std::chrono::milliseconds connect_deadline = std::chrono::milliseconds(0));

// The trained model evaluated, a sample drawn (GPT), both into `out` and the progress
// log, which then finishes.
void report_evaluation(const proto::JobSpec& spec, std::shared_ptr<const training_data> data, const trainer& whole,
                       progress_log& progress, job_outcome& out);
// The same for a pipeline's assembled parameters (po.params), put into one model.
void evaluate_assembled(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                        const pipeline_outcome& po, progress_log& progress, job_outcome& out);

// The part of a process other than rank 0 (run_job calls it).
job_outcome run_job_worker(caf::actor_system& sys, const proto::JobSpec& spec, const coordinator_options& opts,
                           int64_t steps);

}  // namespace troupe
