#include "actors/node_agent.hpp"

#include <cstdio>
#include <exception>

#include "transport/tcp/handshake.hpp"

namespace troupe {

std::string coordinator_proof(const std::string& secret, const std::string& agent_nonce,
                              const std::string& coordinator_nonce) {
  return handshake::proof_hex(secret, "troupe-coordinator|" + agent_nonce + "|" + coordinator_nonce);
}

std::string agent_proof(const std::string& secret, const std::string& coordinator_nonce,
                        const std::string& agent_nonce) {
  return handshake::proof_hex(secret, "troupe-agent|" + coordinator_nonce + "|" + agent_nonce);
}

caf::behavior node_agent(caf::stateful_actor<node_agent_state>* self, caf::actor coordinator,
                         node_agent_options opts) {
  auto& s = self->state;
  s.opts = std::move(opts);
  s.coordinator = coordinator;
  // Ends this agent once: its owner learns the status and why.
  auto finish = [self](int32_t code, const std::string& why) {
    auto& s = self->state;
    if (s.ended) return;
    s.ended = true;
    self->send(s.opts.outcome, done_atom::value, code, why);
    self->quit();
  };
  auto from_coordinator = [self] {
    return caf::actor_cast<caf::actor_addr>(self->current_sender()) == self->state.coordinator.address();
  };
  auto rank_name = [self] { return "process " + std::to_string(self->state.rank); };
  self->monitor(coordinator);
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& s = self->state;
    if (dm.source == s.coordinator.address())
      finish(1, "lost the coordinator (" + self->system().render(dm.reason) + ")");
    else if (s.runner && dm.source == s.runner.address() && dm.reason)
      finish(1, "the runner of " + rank_name() + " failed (" + self->system().render(dm.reason) + ")");
  });
  s.opts.hello.nonce = handshake::random_hex(16);
  self->request(coordinator, s.opts.answer_deadline, join_atom::value, s.opts.hello)
      .then(
          [=](const node_challenge& c) {
            auto& s = self->state;
            if (!handshake::same_proof(c.proof, coordinator_proof(s.opts.secret, s.opts.hello.nonce, c.nonce))) {
              // Say so to the other end too (never a proof of ours for a nonce it chose), and
              // end only once it has answered: a message still in flight when the process
              // exits is lost, and the launcher would never log the refusal.
              const std::string why = "the coordinator could not prove the job's secret (TROUPE_SECRET differs): refused it";
              self->request(s.coordinator, std::chrono::seconds(2), prove_atom::value,
                            std::string("refused: your proof of the secret is wrong"))
                  .then([=](int32_t) { finish(1, why); }, [=](caf::error&) { finish(1, why); });
              return;
            }
            self->request(s.coordinator, s.opts.answer_deadline, prove_atom::value,
                          agent_proof(s.opts.secret, c.nonce, s.opts.hello.nonce))
                .then([=](int32_t rank) { self->state.rank = rank; },
                      [=](caf::error& e) { finish(1, "the coordinator refused this node: " + self->system().render(e)); });
          },
          [=](caf::error& e) { finish(1, "the coordinator did not answer the join: " + self->system().render(e)); });
  return {
      [=](assign_atom, const rank_assignment& a) -> caf::result<caf::actor> {
        auto& s = self->state;
        if (!from_coordinator()) return caf::make_error(caf::sec::invalid_argument, "assign: not from the coordinator");
        if (s.rank < 0 || a.rank != s.rank || s.runner)
          return caf::make_error(caf::sec::invalid_argument,
                                 "assign: process " + std::to_string(a.rank) + " is not this agent's to run (it was given " +
                                     std::to_string(s.rank) + (s.runner ? ", and runs it already)" : ")"));
        auto run = s.opts.run;
        auto agent = caf::actor_cast<caf::actor>(self);
        s.runner = self->spawn<caf::monitored>([run, a, agent](caf::blocking_actor* b) {
          int code = 1;
          try {
            code = run(a);
          } catch (const std::exception& e) {  // never across the actor boundary
            std::fprintf(stderr, "troupe node: process %d failed: %s\n", a.rank, e.what());
          }
          b->send(agent, done_atom::value, int32_t(code));
        });
        return s.runner;
      },
      [=](done_atom, int32_t code) {  // from the runner: the rank has ended
        auto& s = self->state;
        if (!s.runner || caf::actor_cast<caf::actor_addr>(self->current_sender()) != s.runner.address()) return;
        self->request(s.coordinator, s.opts.answer_deadline, done_atom::value, s.rank, code)
            .then([=] { finish(code, code ? rank_name() + " ended with status " + std::to_string(code) : ""); },
                  [=](caf::error& e) {
                    finish(code ? code : 1, "the coordinator did not take the end of " + rank_name() + ": " +
                                                self->system().render(e));
                  });
      },
      [=](stop_atom, int32_t code, const std::string& why) {
        // Status 0: the job ended well before this replacement could take part.
        if (from_coordinator()) finish(code, code ? "stopped by the coordinator: " + why : why);
      },
  };
}

}  // namespace troupe
