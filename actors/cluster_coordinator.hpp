#pragma once
// cluster_coordinator: the launcher's side of a multi-process job (troupe launch). It is
// published over CAF; every process of the job runs a node_agent that joins it. It admits
// an agent only once the agent has proven the job's secret (node_agent.hpp has the
// challenge-response; a wrong proof is refused and logged here, as the agent logs its
// side), gives each admitted agent its rank (policies/process_placement.hpp: the
// launcher's own processes by their slot, nodes from other machines by their address and
// parallel.hosts, else in the order they proved themselves), prints who joined, and once all `world` have joined asks each agent to spawn its rank's
// runner. It monitors every agent and runner: the first that goes down before it has
// reported its end, or reports a failure, stops the job (every other agent is told to stop)
// and the launcher is told why. When every rank has ended well the launcher is told so.
//
// Accepts: (join_atom, node_hello)  -> node_challenge
//          (prove_atom, proof)      -> int32 rank      (an error "wrong secret" if it is wrong)
//          (done_atom, rank, code)  -> ok              from an admitted agent
//          (stop_atom, code, why)   the launcher stops the job (interrupted)
//          (tick_atom)              the join deadline
//          down_msg                 an agent or runner went down
// Sends:   (assign_atom, rank_assignment) -> runner to each agent; (stop_atom, code, why)
//          to the agents; (done_atom, int32 code, string why) to opts.launcher, once.
//
// Elastic (opts.elastic, elastic.mode "respawn"): a process lost after the start does not
// stop the job. The coordinator publishes the next membership view without it in
// opts.store (actors/elastic_job.hpp has the keys), tells the launcher (lost_atom, slot,
// pid, why) so it can kill what is left of it and start a replacement, and admits the
// replacement's agent (a lost slot, or a node from elsewhere) under a fresh member id. Once
// the replacement says it is ready and the current view has completed a step, the next
// view takes it in. Fewer than opts.min_workers in a view ends the job.
//          (poll_atom)              from itself: checks the replacements
//          (lost_atom, slot, pid, why) -> opts.launcher
#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <memory>

#include "actors/messages.hpp"
#include "policies/elastic_membership.hpp"
#include "policies/process_placement.hpp"
#include "transport/rendezvous.hpp"

namespace troupe {

struct cluster_options {
  std::string secret;
  int32_t local = 0;   // processes troupe launch starts on this host: slots 0 .. local-1
  int32_t remote = 0;  // nodes that join from other machines (troupe node)
  rank_assignment job;  // everything but the rank, which each agent gets its own of
  process_placement placement;  // which ranks the local slots run, which host each other rank needs
                                // (empty: slots 0.. local-1, the nodes the rest in join order)
  std::chrono::milliseconds join_deadline{30000};
  caf::actor launcher;  // told (done_atom, code, why) when the job ends
  bool quiet = false;   // no lines about nodes joining
  bool elastic = false;            // elastic.mode "respawn"
  uint32_t min_workers = 1, max_workers = 0;  // 0: the processes launched
  // Fixed places (a pipeline job: each rank holds its own stages): a lost member's place
  // waits for a replacement, which takes its rank in the next view; views never shrink
  // or grow, and the newcomers beyond the lost are spares.
  bool fixed_places = false;
  // Fixed places, no replacements (elastic.respawn false): a lost member's place goes, as
  // in data-parallel jobs, and the workers cut the pipeline anew over those left; a node
  // that joins later is taken in at a step boundary (the pipeline is cut anew again).
  bool shrink_places = false;
  // Optional: whether a view of n members can run the job (a pipeline's stages must split
  // over them); a loss that leaves a view that cannot ends the job with the reason, and a
  // newcomer that would make one waits as a spare.
  std::function<bool(size_t members)> view_fits;
  std::shared_ptr<rendezvous> store;  // the job's rendezvous: where the views go
  std::string events;                 // a JSON-lines file of losses, views and admissions ("": none)
};

struct cluster_member {
  caf::actor agent, runner;
  node_hello hello;
  int32_t rank = -1;  // the member id, for elastic replacements beyond the launched ranks
  bool ended = false;
  bool lost = false;     // elastic: gone, and the job went on without it
  bool in_view = true;   // elastic: a member of the published view (a replacement not yet)
  bool confirmed = true; // elastic: a view with it has trained a step (a replacement in a view may never get in:
                         // the others can end first)
};

struct cluster_state {
  cluster_options opts;
  struct pending_join {
    node_hello hello;
    std::string nonce;  // ours, for its proof
    std::chrono::steady_clock::time_point at;
  };
  std::map<caf::actor_addr, pending_join> pending;  // joined, not yet proven
  std::vector<cluster_member> members;                                     // admitted
  std::vector<bool> taken;  // rank -> admitted
  bool started = false, finished = false;
  elastic_view view;          // elastic: the view published last
  int32_t next_id = 0;        // elastic: the next replacement's member id
  std::chrono::steady_clock::time_point failed_seen;  // when failed/<view> was first seen
  static inline const char* name = "cluster_coordinator";
};

caf::behavior cluster_coordinator(caf::stateful_actor<cluster_state>* self, cluster_options opts);

// One line of an events file (troupe launch --events): {fields, "t_mono": steady_now_s()};
// nothing when `path` is empty. json_text: `text` as a JSON string's contents.
void append_event(const std::string& path, const std::string& fields);
std::string json_text(const std::string& text);

}  // namespace troupe
