#pragma once
// Runs one job to its end in a fresh actor system: the entry point for `troupe train`
// and for tests that check the whole path through the actors.
#include <string>
#include <vector>

#include "actors/coordinator.hpp"
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
// The part of a process other than rank 0 (run_job calls it).
job_outcome run_job_worker(caf::actor_system& sys, const proto::JobSpec& spec, const coordinator_options& opts,
                           int64_t steps);

}  // namespace troupe
