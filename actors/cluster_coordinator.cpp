#include "actors/cluster_coordinator.hpp"

#include <algorithm>
#include <cstdio>

#include "actors/node_agent.hpp"
#include "transport/tcp/handshake.hpp"

namespace troupe {

namespace {

// At most this many joins may wait for their proof, this many from one node, each at
// most kProofWait: a peer that only ever says hello can neither fill the coordinator's
// memory nor crowd out the real joins.
constexpr size_t kMaxPending = 1024, kMaxPendingPerNode = 16;
constexpr std::chrono::seconds kProofWait{30};

std::string describe(const cluster_member& m) {
  return "process " + std::to_string(m.rank) + " (host " + m.hello.host + ", pid " + std::to_string(m.hello.pid) + ")";
}

}  // namespace

caf::behavior cluster_coordinator(caf::stateful_actor<cluster_state>* self, cluster_options opts) {
  auto& s = self->state;
  s.opts = std::move(opts);
  const int32_t world = s.opts.local + s.opts.remote;
  if (s.opts.placement.local_ranks.empty() && s.opts.placement.hosts.empty())
    s.opts.placement = place_processes({}, s.opts.local, s.opts.remote, "");
  s.taken.assign(size_t(world), false);
  auto sender = [self] { return caf::actor_cast<caf::actor_addr>(self->current_sender()); };
  auto member_of = [self](const caf::actor_addr& a) -> cluster_member* {
    for (auto& m : self->state.members)
      if (m.agent.address() == a) return &m;
    return nullptr;
  };
  // Ends the job once: the agents still running are told to stop, the launcher why.
  auto finish = [self](int32_t code, const std::string& why) {
    auto& s = self->state;
    if (s.finished) return;
    s.finished = true;
    if (code != 0)
      for (auto& m : s.members)
        if (!m.ended) self->send(m.agent, stop_atom::value, code, why);
    self->send(s.opts.launcher, done_atom::value, code, why);
  };
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& s = self->state;
    for (auto& m : s.members) {
      if (m.ended) continue;
      if (dm.source == m.agent.address())
        finish(1, "lost " + describe(m) + ": its node agent went down (" + self->system().render(dm.reason) + ")");
      else if (m.runner && dm.source == m.runner.address() && dm.reason)
        finish(1, "the runner of " + describe(m) + " failed (" + self->system().render(dm.reason) + ")");
    }
  });
  self->delayed_send(self, s.opts.join_deadline, tick_atom::value);
  return {
      [=](join_atom, const node_hello& h) -> caf::result<node_challenge> {
        auto& s = self->state;
        if (s.started || s.finished)
          return caf::make_error(caf::sec::invalid_argument,
                                 "join: the job has all its " + std::to_string(world) + " processes already");
        if (h.slot < -1 || h.slot >= s.opts.local)
          return caf::make_error(caf::sec::invalid_argument, "join: slot " + std::to_string(h.slot) +
                                                                 " is not one of this launcher's processes (0.." +
                                                                 std::to_string(s.opts.local - 1) + ")");
        if (h.slot == -1 && s.opts.remote == 0)
          return caf::make_error(caf::sec::invalid_argument,
                                 "join: this job takes no nodes from other machines (troupe launch without --nodes)");
        if (h.nonce.size() != 32)
          return caf::make_error(caf::sec::invalid_argument, "join: expected a nonce of 32 hex digits");
        const auto now = std::chrono::steady_clock::now();
        size_t from_node = 0;
        const auto node = self->current_sender() ? self->current_sender()->node() : caf::node_id{};
        for (auto it = s.pending.begin(); it != s.pending.end();) {
          if (now - it->second.at > kProofWait) {
            it = s.pending.erase(it);
          } else {
            from_node += it->first.node() == node;
            ++it;
          }
        }
        if (s.pending.size() >= kMaxPending || from_node >= kMaxPendingPerNode)
          return caf::make_error(caf::sec::invalid_argument, "join: too many joins wait for their proof");
        const std::string nonce = handshake::random_hex(16);
        s.pending[sender()] = {h, nonce, now};
        return node_challenge{nonce, coordinator_proof(s.opts.secret, h.nonce, nonce)};
      },
      [=](prove_atom, const std::string& proof) -> caf::result<int32_t> {
        auto& s = self->state;
        auto it = s.pending.find(sender());
        if (it == s.pending.end())
          return caf::make_error(caf::sec::invalid_argument, "prove: this node has not joined (join_atom) first");
        const node_hello h = it->second.hello;
        const std::string nonce = it->second.nonce;
        s.pending.erase(it);
        const std::string who = "a node at " + h.host + " (pid " + std::to_string(h.pid) + ")";
        if (!handshake::same_proof(proof, agent_proof(s.opts.secret, nonce, h.nonce))) {
          std::fprintf(stderr, "troupe launch: refused %s: %s\n", who.c_str(),
                       proof.rfind("refused", 0) == 0 ? "it found this launcher's proof of the secret wrong"
                                                      : "it could not prove the job's secret (wrong secret)");
          return caf::make_error(caf::sec::invalid_argument, "wrong secret: this node's TROUPE_SECRET is not the job's");
        }
        if (s.started || s.finished)
          return caf::make_error(caf::sec::invalid_argument,
                                 "prove: the job has all its " + std::to_string(world) + " processes already");
        const int32_t rank = h.slot >= 0 ? s.opts.placement.local_ranks[size_t(h.slot)]
                                         : rank_for_node(s.opts.placement, s.taken, h.host);
        if (rank < 0) {
          std::fprintf(stderr, "troupe launch: refused %s: no process of the job is left for its host (parallel.hosts)\n",
                       who.c_str());
          return caf::make_error(caf::sec::invalid_argument, "the job has no process left for a node at " + h.host +
                                                                 " (parallel.hosts, or all its nodes have joined)");
        }
        if (s.taken[size_t(rank)])
          return caf::make_error(caf::sec::invalid_argument, "prove: slot " + std::to_string(h.slot) + " has joined already");
        s.taken[size_t(rank)] = true;
        cluster_member m;
        m.agent = caf::actor_cast<caf::actor>(self->current_sender());
        m.hello = h;
        m.rank = rank;
        self->monitor(m.agent);
        if (h.slot < 0 && !s.opts.quiet) {
          std::printf("troupe launch: a node at %s (pid %d, %d cores) joined as process %d of %d\n", h.host.c_str(), h.pid,
                      h.cores, m.rank, world);
          std::fflush(stdout);
        }
        s.members.push_back(m);
        // Start once the last one knows its rank: this reply goes out before the assignments.
        if (int32_t(s.members.size()) == world) self->send(self, assign_atom::value);
        return m.rank;
      },
      [=](assign_atom) {  // from itself, once all have joined: each agent spawns its rank's runner
        auto& s = self->state;
        if (sender() != self->address() || s.started || s.finished || int32_t(s.members.size()) != world) return;
        s.started = true;
        std::sort(s.members.begin(), s.members.end(),
                  [](const cluster_member& a, const cluster_member& b) { return a.rank < b.rank; });
        for (const auto& m : s.members) {
          rank_assignment a = s.opts.job;
          a.rank = m.rank;
          a.world = world;
          const int32_t rank = m.rank;
          self->request(m.agent, std::chrono::seconds(30), assign_atom::value, a)
              .then(
                  [=](const caf::actor& runner) {
                    for (auto& x : self->state.members)
                      if (x.rank == rank) {
                        x.runner = runner;
                        self->monitor(runner);
                      }
                  },
                  [=](caf::error& e) {
                    finish(1, "process " + std::to_string(rank) + " could not start: " + self->system().render(e));
                  });
        }
      },
      [=](done_atom, int32_t rank, int32_t code) -> caf::result<void> {
        auto& s = self->state;
        cluster_member* m = member_of(sender());
        if (!s.started || !m || m->rank != rank)
          return caf::make_error(caf::sec::invalid_argument,
                                 "done: not from the agent of process " + std::to_string(rank));
        m->ended = true;
        if (code != 0) {
          finish(code, describe(*m) + " ended with status " + std::to_string(code));
        } else if (std::all_of(s.members.begin(), s.members.end(), [](const cluster_member& x) { return x.ended; })) {
          finish(0, "");
        }
        return caf::unit;
      },
      [=](stop_atom, int32_t code, const std::string& why) {
        if (sender() == self->state.opts.launcher.address()) finish(code, why);
      },
      [=](tick_atom) {  // from itself: the join deadline
        auto& s = self->state;
        if (sender() != self->address() || s.started || s.finished) return;
        finish(1, "only " + std::to_string(s.members.size()) + " of " + std::to_string(world) + " processes joined within " +
                      std::to_string(s.opts.join_deadline.count() / 1000) + " s");
      },
  };
}

}  // namespace troupe
