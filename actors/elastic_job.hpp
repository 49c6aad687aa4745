#pragma once
// One process of an elastic data-parallel job (elastic.mode "respawn" or "restart_all",
// under troupe launch): each process is one replica of the whole model, and the replicas
// sum their gradients over a communicator of the current membership view
// (policies/elastic_membership.hpp).
//
// The views, and who writes what in the job's rendezvous store (prefix
// job/<group>/elastic/):
//   view/<g>, latest   the cluster_coordinator: view g's members, and the newest g
//   ready/<id>         a replacement, once its data and model are loaded
//   at/<g>             view g's leader (its rank 0), once view g completed a step
// Each view has its own communicator (its own link group), so nothing sent before a view
// change can reach a member after it: a stale message has no link to arrive on.
//
// When a collective fails (a peer died: its links closed; or hung: they went silent past
// TROUPE_SILENCE_MS), the survivors drop the step in flight, close their links (so the
// members still waiting fail at once instead of at their deadline), wait for the
// coordinator's next view and join it. Then the members compare their step counts: if they
// differ (a failure in the last part of an all-reduce lets some apply the step, not others)
// or a newcomer joined, the member furthest on streams its parameters and optimizer state
// (a checkpoint shard, checksummed) to the others. No survivor restarts; at most the step
// in flight is lost. The leader checks `latest` at every step and says in the step's
// control all-reduce when a newer view waits, so every member changes views after the
// same step.
#include <memory>

#include "actors/run_job.hpp"

namespace troupe {

// Trains this process's replica to the end; the leader at the end evaluates and returns
// the report (the others return eval.loss -1). Throws input_error for a job this path
// cannot run, std::runtime_error when this process is dropped from the job or no view
// comes in time.
job_outcome run_elastic_job(const proto::JobSpec& spec, std::shared_ptr<const training_data> data,
                            const coordinator_options& opts);

// The store keys above.
std::string elastic_key(uint64_t group, const std::string& what);

}  // namespace troupe
