// actor_bridge (actors/actor_bridge.hpp): two actor systems in one test process stand for
// two processes, linked by a transport group (ranks as threads, over inproc and over tcp
// loopback). Plain sends arrive in order with their tensors bit for bit, requests are
// answered (at once, later through a promise, or with an error), an exit crosses, the end
// of an exposed actor reaches the monitors of its stand-ins, a failed link takes the
// stand-ins down and fails the requests waiting on them, and a bad frame closes the link
// with an error that says what was wrong.
#include <doctest/doctest.h>

#include <atomic>
#include <caf/binary_serializer.hpp>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "actors/actor_bridge.hpp"
#include "transport/communicator.hpp"

using namespace troupe;

namespace {

using hold_atom = caf::atom_constant<caf::atom("hold")>;
using answer_atom = caf::atom_constant<caf::atom("answer")>;
using fail_atom = caf::atom_constant<caf::atom("fail")>;

struct echo_state {
  int64_t received = 0;  // pushes in the order sent
  bool in_order = true;
  double checksum = 0;  // over every element of every pushed tensor
  std::vector<caf::response_promise> held;
};

// The exposed actor: counts pushes, answers at once, later, or with an error.
caf::behavior echo(caf::stateful_actor<echo_state>* self) {
  return {
      [=](push_atom, int64_t seq, const tensor& t) {
        auto& s = self->state;
        s.in_order = s.in_order && seq == s.received;
        ++s.received;
        for (int64_t i = 0; i < t.numel(); ++i) s.checksum += double(t.f32()[i]) * double(i + 1);
      },
      [=](stats_atom) { return caf::make_message(self->state.received, self->state.in_order, self->state.checksum); },
      [=](int64_t x) { return x + 1; },
      [=](hold_atom) {  // answered when (answer_atom) comes, or never
        self->state.held.push_back(self->make_response_promise());
      },
      [=](answer_atom, int64_t v) {
        tensor t = tensor::empty({3});
        for (int i = 0; i < 3; ++i) t.f32()[i] = float(v);
        for (auto& p : self->state.held) p.deliver(v, t);
        self->state.held.clear();
      },
      [=](fail_atom) -> caf::result<int64_t> { return caf::make_error(caf::sec::invalid_argument, "asked to fail"); },
  };
}

struct process {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<actor_bridge> bridge;
  std::mutex mu;
  std::vector<std::string> link_errors;
  explicit process(std::shared_ptr<communicator> group) {
    register_message_types(cfg);
    sys = std::make_unique<caf::actor_system>(cfg);
    bridge = std::make_unique<actor_bridge>(*sys, std::move(group), [this](int, const std::string& why) {
      std::lock_guard<std::mutex> lock(mu);
      link_errors.push_back(why);
    });
  }
  std::vector<std::string> errors() {
    std::lock_guard<std::mutex> lock(mu);
    return link_errors;
  }
};

// Process 0 exposes an echo actor as actor 42 and process 1 holds its stand-in, over a
// group of `transport` whose receives wait at most `deadline`; both bridges started.
struct echo_pair {
  std::vector<std::shared_ptr<communicator>> group;
  std::unique_ptr<process> a, b;
  caf::actor target, there;
  explicit echo_pair(const std::string& transport, std::chrono::milliseconds deadline = std::chrono::seconds(30))
      : group(make_group(transport, 2)) {
    for (auto& c : group) c->deadline = deadline;
    a = std::make_unique<process>(group[0]);
    b = std::make_unique<process>(group[1]);
    target = a->sys->spawn(echo);
    a->bridge->expose(42, target);
    there = b->bridge->remote(0, 42);
    a->bridge->start();
    b->bridge->start();
  }
  // The echo actor ends first, whatever a test left (an actor system waits for its actors).
  ~echo_pair() { caf::anon_send_exit(target, caf::exit_reason::kill); }
};

}  // namespace

TEST_CASE("actor_bridge: sends, requests, exits and ends cross between two processes") {
  for (const std::string transport : {"inproc", "tcp"}) {
    CAPTURE(transport);
    echo_pair pair(transport);
    process &a = *pair.a, &b = *pair.b;
    const caf::actor& there = pair.there;
    {
      caf::scoped_actor self{*b.sys};
      self->monitor(there);
      // Requests answered at once.
      int64_t got = 0;
      self->request(there, std::chrono::seconds(10), int64_t(41))
          .receive([&](int64_t v) { got = v; }, [&](caf::error& e) { FAIL(b.sys->render(e)); });
      CHECK(got == 42);
      // 200 pushes of random tensors of odd sizes (0 included), in order and bit for bit.
      std::mt19937 rng(7);
      std::uniform_real_distribution<float> u(-1, 1);
      double want = 0;
      for (int64_t k = 0; k < 200; ++k) {
        tensor t = tensor::empty({int64_t(k * 37 % 1001)});
        for (int64_t i = 0; i < t.numel(); ++i) {
          t.f32()[i] = u(rng);
          want += double(t.f32()[i]) * double(i + 1);
        }
        self->send(there, push_atom::value, k, std::move(t));
      }
      self->request(there, std::chrono::seconds(10), stats_atom::value)
          .receive(
              [&](int64_t n, bool in_order, double checksum) {
                CHECK(n == 200);
                CHECK(in_order);
                CHECK(checksum == want);
              },
              [&](caf::error& e) { FAIL(b.sys->render(e)); });
      // A request answered later through a promise: held until another message comes.
      caf::actor asker = b.sys->spawn([=](caf::event_based_actor* me) -> caf::behavior {
        return {[=](hold_atom) {
          auto rp = me->make_response_promise();
          me->request(there, caf::infinite, hold_atom::value).then([=](int64_t v, const tensor& t) mutable {
            rp.deliver(v, t);
            me->quit();
          });
          return rp;
        }};
      });
      auto reply = self->request(asker, std::chrono::seconds(10), hold_atom::value);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      self->send(there, answer_atom::value, int64_t(9));
      reply.receive(
          [&](int64_t v, const tensor& t) {
            CHECK(v == 9);
            REQUIRE(t.numel() == 3);
            CHECK(t.f32()[2] == 9.0f);
          },
          [&](caf::error& e) { FAIL(b.sys->render(e)); });
      // An error answer comes back as the request's error.
      std::string err;
      self->request(there, std::chrono::seconds(10), fail_atom::value)
          .receive([&](int64_t) { FAIL("a value where an error was expected"); },
                   [&](caf::error& e) { err = b.sys->render(e); });
      CHECK(err.find("asked to fail") != std::string::npos);
      // An exit crosses; the target's end reaches the stand-in's monitor with its reason.
      self->send_exit(there, caf::exit_reason::user_shutdown);
      caf::error reason;
      self->receive([&](const caf::down_msg& dm) { reason = dm.reason; },
                    caf::after(std::chrono::seconds(10)) >> [&] { FAIL("no down_msg for the stand-in"); });
      CHECK(reason == caf::exit_reason::user_shutdown);
      // Requests to an actor that has ended fail, never hang.
      bool failed = false;
      self->request(there, std::chrono::seconds(10), int64_t(1))
          .receive([&](int64_t) {}, [&](caf::error&) { failed = true; });
      CHECK(failed);
    }
    std::thread closer([&] { a.bridge->close(); });
    b.bridge->close();
    closer.join();
    CHECK(a.errors().empty());
    CHECK(b.errors().empty());
  }
}

TEST_CASE("actor_bridge: a failed link takes the stand-ins down and fails the requests waiting on them") {
  for (const std::string transport : {"tcp", "inproc"}) {
    CAPTURE(transport);
    echo_pair pair(transport);
    process& b = *pair.b;
    const caf::actor& there = pair.there;
    caf::scoped_actor self{*b.sys};
    self->monitor(there);
    auto held = self->request(there, caf::infinite, hold_atom::value);  // never answered by the target
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const auto t0 = std::chrono::steady_clock::now();
    pair.a->bridge.reset();  // process 0 goes away without closing: its links break
    std::string why;
    held.receive([&](int64_t, const tensor&) { FAIL("an answer from a process that is gone"); },
                 [&](caf::error& e) { why = b.sys->render(e); });
    CHECK(why.find("process 0") != std::string::npos);
    caf::error reason;
    self->receive([&](const caf::down_msg& dm) { reason = dm.reason; },
                  caf::after(std::chrono::seconds(10)) >> [&] { FAIL("no down_msg after the link failed"); });
    CHECK(reason);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
    // The callback comes last (after the stand-ins and the requests), on the bridge's thread.
    for (int i = 0; i < 500 && b.errors().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(b.errors().size() == 1);
    CHECK(b.errors()[0].find("the link to process 0 failed") != std::string::npos);
    // A stand-in made after the failure is down at once.
    caf::actor late = b.bridge->remote(0, 43);
    bool failed = false;
    self->request(late, std::chrono::seconds(5), int64_t(1))
        .receive([&](int64_t) {}, [&](caf::error&) { failed = true; });
    CHECK(failed);
    caf::anon_send_exit(pair.target, caf::exit_reason::user_shutdown);
  }
}

TEST_CASE("actor_bridge: a bad frame closes its link with an error that says what was wrong") {
  struct bad {
    std::string name, expect;
    uint64_t words[5];
  };
  const uint64_t magic = 0x5452504241435452;
  for (const bad& c :
       {bad{"magic", "without the bridge's magic", {1, 1, 1, 0, 0}}, bad{"kind", "unknown kind 9", {magic, 9, 1, 0, 0}},
        bad{"size", "at most 2^34", {magic, 1, 1, 0, uint64_t(1) << 40}},
        bad{"actor", "does not expose", {magic, 1, 77, 0, 0}},
        bad{"short", "expected 40 bytes", {magic, 1, 1, 0, 0}}}) {
    CAPTURE(c.name);
    auto group = make_group("inproc", 2);
    process b(group[1]);
    b.bridge->start();
    std::vector<char> payload;
    if (c.name == "actor") {  // a well-formed message for an actor nobody exposed
      caf::binary_serializer out{*b.sys, payload};
      caf::message m = caf::make_message(int64_t(1));
      REQUIRE(!out(m));
    }
    uint64_t words[5];
    std::memcpy(words, c.words, sizeof words);
    if (c.name == "actor") words[4] = payload.size();
    // "short": 16 bytes where a header's 40 belong (the stream would be out of step).
    group[0]->send(1, 7, words, c.name == "short" ? 16 : sizeof words, dtype::u8);
    if (!payload.empty()) group[0]->send(1, 7, payload.data(), payload.size(), dtype::u8);
    for (int i = 0; i < 500 && b.errors().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(b.errors().size() == 1);
    CHECK(b.errors()[0].find(c.expect) != std::string::npos);
    // The sender hears of it too: the bridge aborts its group on a bad frame.
    CHECK(!group[0]->peer_failure(1).empty());
    group[0]->abort("test over");
  }
}

TEST_CASE("actor_bridge: a movable stand-in outlives its process's failure, holds what is sent, and delivers it in "
          "order where the actor moved") {
  for (const std::string transport : {"tcp", "inproc"}) {
    CAPTURE(transport);
    // Process 0 holds actor 42 (and 44); process 1 marks its stand-in for 42 movable, and
    // holds the copy that takes over when process 0 is gone.
    auto group = make_group(transport, 2);
    for (auto& c : group) c->deadline = std::chrono::seconds(30);
    process a(group[0]), b(group[1]);
    caf::actor primary = a.sys->spawn(echo), other = a.sys->spawn(echo), copy = b.sys->spawn(echo);
    a.bridge->expose(42, primary);
    a.bridge->expose(44, other);
    b.bridge->movable(0, 42);
    caf::actor there = b.bridge->remote(0, 42), fixed = b.bridge->remote(0, 44);
    a.bridge->start();
    b.bridge->start();
    caf::scoped_actor self{*b.sys};
    self->monitor(there);
    self->monitor(fixed);
    for (int64_t i = 0; i < 5; ++i) self->send(there, push_atom::value, i, tensor::zeros({4}));
    self->request(there, std::chrono::seconds(10), stats_atom::value)
        .receive([&](int64_t received, bool in_order, double) { CHECK((received == 5 && in_order)); },
                 [&](caf::error& e) { FAIL(b.sys->render(e)); });
    auto lost = self->request(there, caf::infinite, hold_atom::value);  // on its way when process 0 goes
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    a.bridge.reset();  // process 0 is gone
    for (int i = 0; i < 500 && b.errors().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    REQUIRE(b.errors().size() == 1);
    lost.receive([&](int64_t, const tensor&) { FAIL("an answer from a process that is gone"); },
                 [&](caf::error& e) { CHECK(b.sys->render(e).find("process 0") != std::string::npos); });
    // The stand-in that cannot move went down; the movable one holds what is sent now.
    caf::actor_addr down_from;
    self->receive([&](const caf::down_msg& dm) { down_from = dm.source; },
                  caf::after(std::chrono::seconds(10)) >> [&] { FAIL("no down_msg for the stand-in that cannot move"); });
    CHECK(down_from == fixed.address());
    for (int64_t i = 0; i < 3; ++i) {
      tensor t = tensor::empty({4});
      for (int k = 0; k < 4; ++k) t.f32()[k] = float(i);
      self->send(there, push_atom::value, i, t);
    }
    auto asked = self->request(there, std::chrono::seconds(10), int64_t(7));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    b.bridge->move(0, 42, copy, 43);
    asked.receive([&](int64_t v) { CHECK(v == 8); }, [&](caf::error& e) { FAIL(b.sys->render(e)); });
    // The copy got the held pushes, in order, and nothing from before the failure.
    self->request(there, std::chrono::seconds(10), stats_atom::value)
        .receive(
            [&](int64_t received, bool in_order, double checksum) {
              CHECK(received == 3);
              CHECK(in_order);
              CHECK(checksum == doctest::Approx(10.0 * (0 + 1 + 2)));  // (1 + 2 + 3 + 4) x the value
            },
            [&](caf::error& e) { FAIL(b.sys->render(e)); });
    self->receive([&](const caf::down_msg&) { FAIL("the movable stand-in went down"); },
                  caf::after(std::chrono::milliseconds(100)) >> [] {});
    for (caf::actor* x : {&primary, &other, &copy}) caf::anon_send_exit(*x, caf::exit_reason::kill);
  }
}

TEST_CASE("actor_bridge: a move reaches the other processes' stand-ins before anything the mover sends after it") {
  // Process 1 takes over process 0's actor 42 as its own 43 (process 0 still runs: only
  // the routing is under test). Process 2's stand-in for 42 then delivers to process 1's
  // copy, and process 1's own stand-in to the copy in place.
  auto group = make_group("tcp", 3);
  for (auto& c : group) c->deadline = std::chrono::seconds(30);
  std::vector<std::unique_ptr<process>> p;
  for (int r = 0; r < 3; ++r) p.push_back(std::make_unique<process>(group[size_t(r)]));
  caf::actor primary = p[0]->sys->spawn(echo), copy = p[1]->sys->spawn(echo), witness = p[2]->sys->spawn(echo);
  p[0]->bridge->expose(42, primary);
  p[1]->bridge->expose(43, copy);
  p[2]->bridge->expose(45, witness);
  p[1]->bridge->movable(0, 42);
  p[2]->bridge->movable(0, 42);
  caf::actor at1 = p[1]->bridge->remote(0, 42), at2 = p[2]->bridge->remote(0, 42);
  caf::actor witness_at1 = p[1]->bridge->remote(2, 45);
  for (auto& x : p) x->bridge->start();
  caf::scoped_actor self1{*p[1]->sys}, self2{*p[2]->sys};
  p[1]->bridge->move(0, 42, copy, 43);
  // A request to process 2 after the move: its answer means process 2 has taken the move.
  self1->request(witness_at1, std::chrono::seconds(10), int64_t(1))
      .receive([&](int64_t v) { CHECK(v == 2); }, [&](caf::error& e) { FAIL(p[1]->sys->render(e)); });
  for (int64_t i = 0; i < 4; ++i) self2->send(at2, push_atom::value, i, tensor::zeros({2}));
  self2->request(at2, std::chrono::seconds(10), stats_atom::value)
      .receive([&](int64_t received, bool in_order, double) { CHECK((received == 4 && in_order)); },
               [&](caf::error& e) { FAIL(p[2]->sys->render(e)); });
  self1->request(at1, std::chrono::seconds(10), stats_atom::value)  // the same copy, from its own process
      .receive([&](int64_t received, bool, double) { CHECK(received == 4); },
               [&](caf::error& e) { FAIL(p[1]->sys->render(e)); });
  self1->request(p[1]->bridge->remote(0, 42), std::chrono::seconds(10), int64_t(5))
      .receive([&](int64_t v) { CHECK(v == 6); }, [&](caf::error& e) { FAIL(p[1]->sys->render(e)); });
  // Process 0's actor got none of it.
  caf::scoped_actor self0{*p[0]->sys};
  self0->request(primary, std::chrono::seconds(10), stats_atom::value)
      .receive([&](int64_t received, bool, double) { CHECK(received == 0); },
               [&](caf::error& e) { FAIL(p[0]->sys->render(e)); });
  for (caf::actor* x : {&primary, &copy, &witness}) caf::anon_send_exit(*x, caf::exit_reason::kill);
  std::vector<std::thread> closing;  // each waits for the others' ends
  for (auto& x : p) closing.emplace_back([&x] { x->bridge->close(); });
  for (auto& t : closing) t.join();
}
