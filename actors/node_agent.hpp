#pragma once
// node_agent: one per process of a multi-process job. It joins the launcher's
// cluster_coordinator over CAF, proves the job's secret (and makes the coordinator prove
// it first: an agent never runs a job for someone who does not know the secret), then
// waits to be told what to run. On (assign_atom, rank_assignment) it spawns the rank's
// runner, a detached actor that runs that process's part of the actor graph (the app
// supplies how: node_agent_options::run), and answers with the runner's handle so the
// coordinator can monitor it too. When the runner ends it reports (done_atom, rank, code)
// and quits once the coordinator has acknowledged it.
//
// The proofs, HMAC-SHA256 with the job's secret (never the secret itself):
//   coordinator: proof_hex(secret, "troupe-coordinator|" + agent nonce + "|" + its nonce)
//   agent:       proof_hex(secret, "troupe-agent|" + coordinator nonce + "|" + agent nonce)
// The roles differ, so neither proof can be turned around; the nonces are fresh per join.
//
// Sends:   (join_atom, node_hello) -> node_challenge;  (prove_atom, proof) -> int32 rank
//          (done_atom, rank, code) -> ok               to the coordinator
//          (done_atom, code, why)                      to opts.outcome, once, at the end
// Accepts: (assign_atom, rank_assignment) -> caf::actor runner   from the coordinator only
//          (stop_atom, code, why)         another process failed: end with `code`
//          down_msg                       the coordinator or the runner went down
#include <functional>
#include <string>

#include "actors/messages.hpp"

namespace troupe {

struct node_agent_options {
  std::string secret;
  node_hello hello;  // all but the nonce, which the agent draws
  // Runs the assigned rank to its end on the runner's own thread; returns its exit status.
  std::function<int(const rank_assignment&)> run;
  caf::actor outcome;  // told (done_atom, int32 code, string why) when the agent ends
  std::chrono::milliseconds answer_deadline{30000};  // for each of the coordinator's answers
};

struct node_agent_state {
  node_agent_options opts;
  caf::actor coordinator, runner;
  int32_t rank = -1;
  bool ended = false;
  static inline const char* name = "node_agent";
};

caf::behavior node_agent(caf::stateful_actor<node_agent_state>* self, caf::actor coordinator,
                         node_agent_options opts);

// The two proofs above (the coordinator's side uses them too).
std::string coordinator_proof(const std::string& secret, const std::string& agent_nonce,
                              const std::string& coordinator_nonce);
std::string agent_proof(const std::string& secret, const std::string& coordinator_nonce,
                        const std::string& agent_nonce);

}  // namespace troupe
