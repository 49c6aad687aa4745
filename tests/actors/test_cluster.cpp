// The control plane of a multi-process job, in one process: the cluster_coordinator and its
// node agents. Agents that prove the secret get their ranks and run them; the coordinator
// must prove the secret first, and an agent refuses one that cannot; a wrong proof, a
// proof without a join, a second claim on a slot are refused; a failing rank, or an
// agent that goes down, stops the others and tells the launcher why.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "actors/cluster_coordinator.hpp"
#include "actors/node_agent.hpp"
#include "policies/process_placement.hpp"

using namespace troupe;

namespace {

struct test_config : caf::actor_system_config {
  test_config() { register_message_types(*this); }
};

const std::string kSecret = "a-secret-of-at-least-32-characters-0123456789";

cluster_options options(caf::actor launcher, int local, int remote) {
  cluster_options o;
  o.secret = kSecret;
  o.local = local;
  o.remote = remote;
  o.job.spec = "{\"name\": \"x\"}";
  o.job.path = "/jobs/x.json";
  o.job.flags = {"--steps", "3"};
  o.job.rendezvous = "/tmp/rv";
  o.job.group = 77;
  o.join_deadline = std::chrono::milliseconds(3000);
  o.launcher = launcher;
  o.quiet = true;
  return o;
}

node_agent_options agent_options(caf::actor outcome, int slot, std::string secret,
                                 std::function<int(const rank_assignment&)> run) {
  node_agent_options o;
  o.secret = std::move(secret);
  o.hello.host = "127.0.0.1";
  o.hello.pid = 1000 + slot;
  o.hello.cores = 2;
  o.hello.slot = slot;
  o.run = std::move(run);
  o.outcome = outcome;
  o.answer_deadline = std::chrono::milliseconds(3000);
  return o;
}

// The next (done_atom, code, why) that `self` gets, or code -1 after `wait`.
std::pair<int32_t, std::string> next_done(caf::scoped_actor& self, std::chrono::milliseconds wait) {
  std::pair<int32_t, std::string> out{-1, "nothing within the deadline"};
  self->receive([&](done_atom, int32_t code, const std::string& why) { out = {code, why}; },
                caf::after(wait) >> [] {});
  return out;
}

}  // namespace

TEST_CASE("cluster: agents that prove the secret get their ranks and run them, and the job ends when all have") {
  test_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor launcher{sys}, agents{sys};
  auto coord = sys.spawn(cluster_coordinator, options(launcher, 2, 1));
  std::mutex mu;
  std::vector<rank_assignment> ran;
  auto run = [&](const rank_assignment& a) {
    std::lock_guard<std::mutex> lock(mu);
    ran.push_back(a);
    return 0;
  };
  // The node from elsewhere joins first, yet takes the rank after the launcher's own.
  sys.spawn(node_agent, coord, agent_options(agents, -1, kSecret, run));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  sys.spawn(node_agent, coord, agent_options(agents, 1, kSecret, run));
  sys.spawn(node_agent, coord, agent_options(agents, 0, kSecret, run));
  auto [code, why] = next_done(launcher, std::chrono::milliseconds(5000));
  CHECK(code == 0);
  CHECK(why == "");
  for (int k = 0; k < 3; ++k) CHECK(next_done(agents, std::chrono::milliseconds(3000)).first == 0);
  std::lock_guard<std::mutex> lock(mu);
  REQUIRE(ran.size() == 3);
  std::vector<int> ranks;
  for (const auto& a : ran) {
    ranks.push_back(a.rank);
    CHECK(a.world == 3);
    CHECK(a.spec == "{\"name\": \"x\"}");
    CHECK(a.path == "/jobs/x.json");
    CHECK(a.flags == std::vector<std::string>{"--steps", "3"});
    CHECK(a.rendezvous == "/tmp/rv");
    CHECK(a.group == 77);
  }
  std::sort(ranks.begin(), ranks.end());
  CHECK(ranks == std::vector<int>{0, 1, 2});
  launcher->send_exit(coord, caf::exit_reason::kill);
}

TEST_CASE("cluster: an agent with another secret refuses the coordinator, which never admits it") {
  test_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor launcher{sys}, agents{sys};
  auto o = options(launcher, 1, 0);
  o.join_deadline = std::chrono::milliseconds(500);
  auto coord = sys.spawn(cluster_coordinator, o);
  std::atomic<int> runs{0};
  sys.spawn(node_agent, coord,
            agent_options(agents, 0, "another-secret-of-at-least-32-characters-xx", [&](const rank_assignment&) {
              ++runs;
              return 0;
            }));
  auto [code, why] = next_done(agents, std::chrono::milliseconds(3000));
  CHECK(code == 1);
  CHECK(why.find("the coordinator could not prove the job's secret") != std::string::npos);
  // Nobody joined: the launcher hears so at the join deadline; nothing ran.
  auto [lcode, lwhy] = next_done(launcher, std::chrono::milliseconds(3000));
  CHECK(lcode == 1);
  CHECK(lwhy == "only 0 of 1 processes joined within 0 s");
  CHECK(runs == 0);
  launcher->send_exit(coord, caf::exit_reason::kill);
}

TEST_CASE("cluster: the coordinator proves the secret first, and refuses a wrong proof, a proof without a join and a "
          "slot taken twice") {
  test_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor launcher{sys}, client{sys}, other{sys};
  auto coord = sys.spawn(cluster_coordinator, options(launcher, 2, 0));
  const auto wait = std::chrono::seconds(3);
  auto error_of = [&](caf::scoped_actor& who, auto... xs) {
    std::string err = "no error";
    who->request(coord, wait, xs...).receive([&](caf::message&) { err = "an answer"; },
                                             [&](caf::error& e) { err = sys.render(e); });
    return err;
  };
  CHECK(error_of(client, prove_atom::value, std::string("00")).find("has not joined") != std::string::npos);
  node_hello h;
  h.host = "127.0.0.1", h.pid = 5, h.slot = 0, h.nonce = std::string(32, 'a');
  node_challenge c;
  client->request(coord, wait, join_atom::value, h).receive([&](const node_challenge& x) { c = x; },
                                                            [&](caf::error& e) { FAIL(sys.render(e)); });
  CHECK(c.proof == coordinator_proof(kSecret, h.nonce, c.nonce));
  CHECK(c.proof != coordinator_proof("not-the-secret", h.nonce, c.nonce));
  // A proof for another nonce (a replayed one) is wrong too.
  CHECK(error_of(client, prove_atom::value, agent_proof(kSecret, std::string(32, 'b'), h.nonce))
            .find("wrong secret") != std::string::npos);
  // Each join gets a fresh nonce; the right proof for it admits the client as slot 0.
  node_challenge c2;
  client->request(coord, wait, join_atom::value, h).receive([&](const node_challenge& x) { c2 = x; },
                                                            [&](caf::error&) {});
  CHECK(c2.nonce != c.nonce);
  int32_t rank = -1;
  client->request(coord, wait, prove_atom::value, agent_proof(kSecret, c2.nonce, h.nonce))
      .receive([&](int32_t r) { rank = r; }, [&](caf::error& e) { FAIL(sys.render(e)); });
  CHECK(rank == 0);
  // Slot 0 again, from another actor: refused; a slot past the launcher's, and a bad nonce, too.
  node_challenge c3;
  other->request(coord, wait, join_atom::value, h).receive([&](const node_challenge& x) { c3 = x; },
                                                           [&](caf::error&) {});
  CHECK(error_of(other, prove_atom::value, agent_proof(kSecret, c3.nonce, h.nonce)).find("slot 0 has joined already") !=
        std::string::npos);
  h.slot = 2;
  CHECK(error_of(other, join_atom::value, h).find("slot 2 is not one of this launcher's processes (0..1)") !=
        std::string::npos);
  h.slot = -1;
  CHECK(error_of(other, join_atom::value, h).find("takes no nodes from other machines") != std::string::npos);
  h.slot = 1, h.nonce = "short";
  CHECK(error_of(other, join_atom::value, h).find("expected a nonce of 32 hex digits") != std::string::npos);
  // Its own start and deadline messages, sent by anybody else, change nothing.
  other->send(coord, assign_atom::value);
  other->send(coord, tick_atom::value);
  CHECK(next_done(launcher, std::chrono::milliseconds(200)).first == -1);
  // Only the launcher may stop the job.
  client->send(coord, stop_atom::value, int32_t(9), std::string("not yours to stop"));
  CHECK(next_done(launcher, std::chrono::milliseconds(200)).first == -1);
  launcher->send_exit(coord, caf::exit_reason::kill);
}

TEST_CASE("cluster: a rank that fails, or an agent that goes down, stops the others and the launcher hears why") {
  for (bool kill_agent : {false, true}) {
    CAPTURE(kill_agent);
    test_config cfg;
    caf::actor_system sys{cfg};
    caf::scoped_actor launcher{sys}, agents{sys};
    auto coord = sys.spawn(cluster_coordinator, options(launcher, 2, 0));
    std::atomic<bool> release{false};
    std::atomic<int> started{0};
    // Rank 0 trains until released; rank 1 fails with status 3 (or its agent is killed).
    auto run = [&](const rank_assignment& a) {
      ++started;
      if (a.rank == 1 && !kill_agent) return 3;
      while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      return 0;
    };
    sys.spawn(node_agent, coord, agent_options(agents, 0, kSecret, run));
    auto agent1 = sys.spawn(node_agent, coord, agent_options(agents, 1, kSecret, run));
    if (kill_agent) {
      for (int i = 0; i < 400 && started < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
      REQUIRE(started == 2);
      launcher->send_exit(agent1, caf::exit_reason::kill);
    }
    auto [code, why] = next_done(launcher, std::chrono::milliseconds(5000));
    if (kill_agent) {
      CHECK(code == 1);
      CHECK(why.find("lost process 1 (host 127.0.0.1, pid 1001): its node agent went down") != std::string::npos);
    } else {
      CHECK(code == 3);
      CHECK(why == "process 1 (host 127.0.0.1, pid 1001) ended with status 3");
    }
    // Rank 0's agent is told to stop, with the reason, while its rank still runs.
    bool told = false;
    for (int k = 0; k < 2 && !told; ++k) {
      auto [acode, awhy] = next_done(agents, std::chrono::milliseconds(3000));
      told = awhy.find("stopped by the coordinator: " + why) != std::string::npos;
      if (told) CHECK(acode == code);
    }
    CHECK(told);
    release = true;
    launcher->send_exit(coord, caf::exit_reason::kill);
  }
}

TEST_CASE("cluster: with parallel.hosts a node takes the rank placed on its address, whatever order they join in, "
          "and one at an address with no rank left is refused") {
  test_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor launcher{sys}, agents{sys};
  auto o = options(launcher, 1, 2);
  o.placement = place_processes({"any", "10.0.0.3", "10.0.0.2"}, 1, 2, "10.0.0.1");
  auto coord = sys.spawn(cluster_coordinator, o);
  std::mutex mu;
  std::vector<std::pair<int, std::string>> ran;  // rank, host of the agent that ran it
  auto run_at = [&](std::string host) {
    return [&, host](const rank_assignment& a) {
      std::lock_guard<std::mutex> lock(mu);
      ran.push_back({a.rank, host});
      return 0;
    };
  };
  auto at = [&](const std::string& host, int slot) {
    auto ao = agent_options(agents, slot, kSecret, run_at(host));
    ao.hello.host = host;
    return ao;
  };
  sys.spawn(node_agent, coord, at("10.0.0.2", -1));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  sys.spawn(node_agent, coord, at("10.0.0.9", -1));  // no rank for it
  auto [code9, why9] = next_done(agents, std::chrono::milliseconds(3000));
  CHECK(code9 == 1);
  CHECK(why9.find("the job has no process left for a node at 10.0.0.9") != std::string::npos);
  sys.spawn(node_agent, coord, at("10.0.0.3", -1));
  sys.spawn(node_agent, coord, at("10.0.0.1", 0));
  CHECK(next_done(launcher, std::chrono::milliseconds(5000)).first == 0);
  for (int k = 0; k < 3; ++k) CHECK(next_done(agents, std::chrono::milliseconds(3000)).first == 0);
  std::lock_guard<std::mutex> lock(mu);
  std::sort(ran.begin(), ran.end());
  CHECK(ran == std::vector<std::pair<int, std::string>>{{0, "10.0.0.1"}, {1, "10.0.0.3"}, {2, "10.0.0.2"}});
  launcher->send_exit(coord, caf::exit_reason::kill);
}
