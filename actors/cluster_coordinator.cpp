#include "actors/cluster_coordinator.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "actors/elastic_job.hpp"
#include "actors/node_agent.hpp"
#include "runtime/trace.hpp"  // steady_now_s
#include "transport/tcp/handshake.hpp"

namespace troupe {

namespace {

// At most this many joins may wait for their proof, this many from one node, each at
// most kProofWait: a peer that only ever says hello can neither fill the coordinator's
// memory nor crowd out the real joins.
constexpr size_t kMaxPending = 1024, kMaxPendingPerNode = 16;
constexpr std::chrono::seconds kProofWait{30};
// Elastic: replacements that may wait, ready, for a place in the job.
constexpr size_t kMaxSpares = 16;

std::string describe(const cluster_member& m) {
  return "process " + std::to_string(m.rank) + " (host " + m.hello.host + ", pid " + std::to_string(m.hello.pid) + ")";
}

bool every_member_ended(cluster_state& s) {
  for (auto& x : s.members)
    if (x.in_view && !x.confirmed && !x.lost && !x.ended) {
      try {
        s.opts.store->get(elastic_key(s.opts.job.group, "joined/" + std::to_string(x.rank)),
                          std::chrono::milliseconds(1));
        x.confirmed = true;
      } catch (const std::exception&) {
      }
    }
  return std::all_of(s.members.begin(), s.members.end(),
                     [](const cluster_member& x) { return x.ended || x.lost || !x.in_view || !x.confirmed; });
}

}  // namespace

void append_event(const std::string& path, const std::string& fields) {
  if (path.empty()) return;
  std::ofstream out(path, std::ios::app);
  char t[48];
  std::snprintf(t, sizeof t, ",\"t_mono\":%.6f}", steady_now_s());
  out << "{" << fields << t << "\n";
}

std::string json_text(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    out += c;
  }
  return out;
}

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
    for (auto& m : s.members)
      if (!m.ended && !m.lost && (code != 0 || !m.in_view || !m.confirmed))
        self->send(m.agent, stop_atom::value, code, code ? why : std::string("the job ended before it could join"));
    self->send(s.opts.launcher, done_atom::value, code, why);
  };
  // Elastic: the next view goes to the store, where the workers look for it.
  auto publish = [=](const elastic_view& v) {
    auto& s = self->state;
    s.view = v;
    s.failed_seen = {};
    try {
      s.opts.store->set(elastic_key(s.opts.job.group, "view/" + std::to_string(v.generation)), v.encode());
      s.opts.store->set(elastic_key(s.opts.job.group, "latest"), std::to_string(v.generation));
    } catch (const std::exception& e) {
      return finish(1, std::string("cannot publish view ") + std::to_string(v.generation) +
                           " in the job's rendezvous store: " + e.what());
    }
    std::string ids;
    for (int32_t m : v.members) ids += (ids.empty() ? "" : ",") + std::to_string(m);
    append_event(s.opts.events, "\"event\":\"view\",\"generation\":" + std::to_string(v.generation) + ",\"members\":[" +
                             ids + "]");
  };
  // A member is gone: before the start, or without elasticity, the job ends; else it goes on
  // without it, and the launcher may start a replacement.
  auto lose = [=](cluster_member& m, const std::string& why) {
    auto& s = self->state;
    if (m.lost || s.finished) return;
    if (!s.opts.elastic || !s.started) {
      append_event(s.opts.events, "\"event\":\"failed\",\"member\":" + std::to_string(m.rank) + ",\"why\":\"" +
                               json_text(why) + "\"");
      return finish(1, why);
    }
    m.lost = true;
    append_event(s.opts.events, "\"event\":\"lost\",\"member\":" + std::to_string(m.rank) + ",\"pid\":" +
                             std::to_string(m.hello.pid) + ",\"slot\":" + std::to_string(m.hello.slot) + ",\"why\":\"" +
                             json_text(why) + "\"");
    // The leader of the view reports the run: lost once the others have ended, it took the
    // evaluation with it.
    const bool leader = m.in_view && !s.view.members.empty() && s.view.members.front() == m.rank;
    // The others are done: they ran the job to its end (m counts as lost already; members
    // all lost at once are not an end: their replacements take the job on).
    const bool someone_done = std::any_of(s.members.begin(), s.members.end(),
                                          [](const cluster_member& x) { return x.ended && !x.lost; });
    const bool others_done = someone_done && every_member_ended(s);
    if (leader && others_done)
      return finish(1, why + ", after the others had ended: the leader of the last view did not report the run");
    if (m.in_view && s.opts.fixed_places && !s.opts.shrink_places) {
      // The place stays in the view, lost, until a replacement is ready (the poll).
      if (!s.opts.quiet) {
        std::printf("troupe launch: %s; its place (%d) waits for a replacement\n", why.c_str(), s.view.index_of(m.rank));
        std::fflush(stdout);
      }
    } else if (m.in_view) {
      const elastic_view next = view_without(s.view, m.rank);
      if (!view_viable(next, s.opts.min_workers))
        return finish(1, why + "; " + std::to_string(next.members.size()) + " workers are left, fewer than "
                                   "elastic.min_workers (" + std::to_string(s.opts.min_workers) + ")");
      if (s.opts.view_fits && !s.opts.view_fits(next.members.size()))
        return finish(1, why + "; the job cannot be cut over the " + std::to_string(next.members.size()) +
                             " processes left (its pipeline stages and replicas do not split over them)");
      publish(next);
      if (!s.opts.quiet) {
        std::printf("troupe launch: %s; going on with %zu worker%s (view %lld)\n", why.c_str(), next.members.size(), next.members.size() == 1 ? "" : "s",
                    (long long)next.generation);
        std::fflush(stdout);
      }
    }
    if (others_done) return finish(0, "");  // no replacement
    self->send(s.opts.launcher, lost_atom::value, m.hello.slot, m.hello.pid, why);
  };
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& s = self->state;
    for (auto& m : s.members) {
      if (m.ended) continue;
      if (m.lost) continue;
      if (dm.source == m.agent.address())
        lose(m, "lost " + describe(m) + ": its node agent went down (" + self->system().render(dm.reason) + ")");
      else if (m.runner && dm.source == m.runner.address() && dm.reason)
        lose(m, "the runner of " + describe(m) + " failed (" + self->system().render(dm.reason) + ")");
    }
  });
  // Asks `agent` to spawn the runner of a.rank, then monitors it; failed(why) otherwise.
  auto start_runner = [self](const caf::actor& agent, const rank_assignment& a,
                             std::function<void(const std::string&)> failed) {
    const int32_t rank = a.rank;
    self->request(agent, std::chrono::seconds(30), assign_atom::value, a)
        .then(
            [=](const caf::actor& runner) {
              for (auto& x : self->state.members)
                if (x.rank == rank) {
                  x.runner = runner;
                  self->monitor(runner);
                }
            },
            [=](caf::error& e) { failed(self->system().render(e)); });
  };
  self->delayed_send(self, s.opts.join_deadline, tick_atom::value);
  return {
      [=](join_atom, const node_hello& h) -> caf::result<node_challenge> {
        auto& s = self->state;
        if ((s.started && !s.opts.elastic) || s.finished)
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
        if ((s.started && !s.opts.elastic) || s.finished)
          return caf::make_error(caf::sec::invalid_argument,
                                 "prove: the job has all its " + std::to_string(world) + " processes already");
        if (s.started) {  // elastic: a replacement, for a lost slot of ours or from another machine
          const bool lost_slot = std::any_of(s.members.begin(), s.members.end(), [&](const cluster_member& x) {
            return x.lost && h.slot >= 0 && x.hello.slot == h.slot;
          });
          const bool slot_busy = std::any_of(s.members.begin(), s.members.end(), [&](const cluster_member& x) {
            return !x.lost && h.slot >= 0 && x.hello.slot == h.slot;
          });
          // A replacement beyond elastic.max_workers waits as a spare, taken in when one is lost.
          const size_t waiting = size_t(std::count_if(s.members.begin(), s.members.end(), [](const cluster_member& x) {
            return !x.lost && !x.ended && !x.in_view;
          }));
          if ((h.slot >= 0 && (!lost_slot || slot_busy)) || (h.slot < 0 && s.opts.remote == 0) ||
              waiting >= kMaxSpares)
            return caf::make_error(caf::sec::invalid_argument,
                                   "prove: the job has no place for another process now (" +
                                       std::string(h.slot >= 0 ? "slot " + std::to_string(h.slot) + " is not lost"
                                                   : s.opts.remote == 0 ? "it takes no nodes from other machines"
                                                                        : std::to_string(waiting) + " spares wait already") +
                                       ")");
          cluster_member m;
          m.agent = caf::actor_cast<caf::actor>(self->current_sender());
          m.hello = h;
          m.rank = s.next_id++;
          m.in_view = false;
          m.confirmed = false;
          self->monitor(m.agent);
          s.members.push_back(m);
          append_event(s.opts.events, "\"event\":\"admitted\",\"member\":" + std::to_string(m.rank) + ",\"pid\":" +
                                   std::to_string(h.pid) + ",\"slot\":" + std::to_string(h.slot));
          if (!s.opts.quiet) {
            std::printf("troupe launch: a replacement (host %s, pid %d) joined as process %d\n", h.host.c_str(), h.pid,
                        m.rank);
            std::fflush(stdout);
          }
          // After this reply has gone out (the agent learns its id first).
          self->send(self, assign_atom::value, m.rank);
          return m.rank;
        }
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
        if (s.opts.elastic) {
          s.next_id = world;
          elastic_view first;
          for (const auto& m : s.members) first.members.push_back(m.rank);
          publish(first);
          self->send(self, poll_atom::value);
        }
        for (const auto& m : s.members) {
          rank_assignment a = s.opts.job;
          a.rank = m.rank;
          a.world = world;
          const int32_t rank = m.rank;
          start_runner(m.agent, a, [=](const std::string& e) {
            finish(1, "process " + std::to_string(rank) + " could not start: " + e);
          });
        }
      },
      [=](assign_atom, int32_t id) {  // from itself: a replacement, once it knows its id, spawns its runner
        auto& s = self->state;
        if (sender() != self->address() || s.finished) return;
        cluster_member* m = nullptr;
        for (auto& x : s.members)
          if (x.rank == id) m = &x;
        if (!m || m->lost) return;
        rank_assignment a = s.opts.job;
        a.rank = id;
        a.world = world;
        a.flags.push_back("--elastic-join");
        start_runner(m->agent, a, [=](const std::string& e) {
          for (auto& x : self->state.members)
            if (x.rank == id) lose(x, "replacement " + std::to_string(id) + " could not start: " + e);
        });
      },
      [=](done_atom, int32_t rank, int32_t code) -> caf::result<void> {
        auto& s = self->state;
        cluster_member* m = member_of(sender());
        if (!s.started || !m || m->rank != rank)
          return caf::make_error(caf::sec::invalid_argument,
                                 "done: not from the agent of process " + std::to_string(rank));
        if (code != 0 && s.opts.elastic) {
          lose(*m, describe(*m) + " ended with status " + std::to_string(code));
          m->ended = true;
        } else if (code != 0) {
          m->ended = true;
          finish(code, describe(*m) + " ended with status " + std::to_string(code));
        } else {
          m->ended = true;
          if (every_member_ended(s)) finish(0, "");
        }
        return caf::unit;
      },
      [=](stop_atom, int32_t code, const std::string& why) {
        if (sender() == self->state.opts.launcher.address()) finish(code, why);
      },
      [=](poll_atom) {  // from itself: views that failed, replacements that are ready
        auto& s = self->state;
        if (sender() != self->address() || s.finished) return;
        bool waiting = false;
        auto known = [&](const std::string& what) {
          try {
            s.opts.store->get(elastic_key(s.opts.job.group, what), std::chrono::milliseconds(1));
            return true;
          } catch (const std::exception&) {
            return false;
          }
        };
        // A view whose links failed with no member lost (a data-link fault the control
        // plane did not see): after a grace for the loss to show, the same members again.
        // Fixed places: a lost member's place, waiting for its replacement (a lost member
        // stays in_view there until one takes it; elsewhere in_view means nothing once lost).
        const auto vacant = !s.opts.fixed_places || s.opts.shrink_places ? s.members.end()
                                                 : std::find_if(s.members.begin(), s.members.end(),
                                                                [](const cluster_member& x) { return x.lost && x.in_view; });
        if (vacant == s.members.end() && known("failed/" + std::to_string(s.view.generation))) {
          const auto now = std::chrono::steady_clock::now();
          if (s.failed_seen == std::chrono::steady_clock::time_point{}) s.failed_seen = now;
          if (now - s.failed_seen > std::chrono::seconds(1)) {
            elastic_view again{s.view.generation + 1, s.view.members};
            append_event(s.opts.events, "\"event\":\"retry\",\"generation\":" + std::to_string(s.view.generation));
            publish(again);
            if (s.finished) return;
          }
        }
        const size_t most = s.opts.max_workers ? s.opts.max_workers : size_t(world);
        for (auto& m : s.members) {
          if (m.lost || m.in_view || m.ended) continue;
          waiting = true;
          if (s.opts.fixed_places && !s.opts.shrink_places) {
            // Ready newcomers take the lost members' places, all in one view (a view with
            // a lost member in it could never form): the others wait for them.
            if (vacant == s.members.end()) continue;
            std::vector<cluster_member*> lost_places, ready;
            for (auto& x : s.members) {
              if (x.lost && x.in_view) lost_places.push_back(&x);
              if (!x.lost && !x.in_view && !x.ended && known("ready/" + std::to_string(x.rank))) ready.push_back(&x);
            }
            if (ready.size() < lost_places.size()) break;  // not yet
            elastic_view next = s.view;
            for (size_t k = 0; k < lost_places.size(); ++k) {
              next = view_replacing(next, lost_places[k]->rank, ready[k]->rank);
              next.generation = s.view.generation + 1;
              lost_places[k]->in_view = false;
              ready[k]->in_view = true;
              if (!s.opts.quiet)
                std::printf("troupe launch: process %d is ready: it takes place %d (view %lld)\n", ready[k]->rank,
                            next.index_of(ready[k]->rank), (long long)next.generation);
            }
            std::fflush(stdout);
            publish(next);
            break;
          }
          // Only once the view in force has trained a step (views change at step
          // boundaries), and while it has room (else this one is a spare).
          if (s.view.members.size() < most && (!s.opts.view_fits || s.opts.view_fits(s.view.members.size() + 1)) &&
              known("ready/" + std::to_string(m.rank)) &&
              known("at/" + std::to_string(s.view.generation))) {
            m.in_view = true;
            publish(view_with(s.view, m.rank));
            if (!s.opts.quiet) {
              std::printf("troupe launch: process %d is ready: growing to %zu workers (view %lld)\n", m.rank,
                          s.view.members.size(), (long long)s.view.generation);
              std::fflush(stdout);
            }
            break;  // one view change at a time
          }
        }
        if (s.finished) return;
        self->delayed_send(self, std::chrono::milliseconds(waiting ? 10 : 20), poll_atom::value);
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
