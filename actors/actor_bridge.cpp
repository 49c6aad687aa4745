#include "actors/actor_bridge.hpp"

#include <atomic>
#include <caf/actor_proxy.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

namespace troupe {

namespace {

constexpr uint64_t kBridgeTag = 7;
constexpr uint64_t kMagic = 0x5452504241435452;  // "TRPBACTR"
// Larger payloads are refused as a bad frame (a tensor of 2^34 bytes is 16 GiB).
constexpr uint64_t kMaxPayload = uint64_t(1) << 34;

enum kind : uint64_t {
  k_send = 1,     // a message for exposed actor `id`
  k_request = 2,  // the same, answered with k_reply under request number `req`
  k_reply = 3,    // the answer to this process's request `req`
  k_exit = 4,     // an exit message for exposed actor `id` (payload: the reason)
  k_down = 5,     // the sender's exposed actor `id` ended (payload: its reason)
  k_end = 6,      // the sender sends nothing more
  k_move = 7,     // an actor of a failed process now lives in the sender (payload: its
                  // process, its id there, its id in the sender)
};

struct header {
  uint64_t magic = kMagic, kind = 0, id = 0, req = 0, bytes = 0;
};
static_assert(sizeof(header) == 5 * sizeof(uint64_t));

struct frame {
  header h;
  std::vector<char> payload;
};

const char* kind_name(uint64_t k) {
  switch (k) {
    case k_send:
      return "send";
    case k_request:
      return "request";
    case k_reply:
      return "reply";
    case k_exit:
      return "exit";
    case k_down:
      return "down";
    case k_end:
      return "end";
    case k_move:
      return "move";
  }
  return "unknown";
}

// Stands in for actor `id` of process `process`: everything sent to it goes there, or,
// once the actor has moved (actor_bridge::move), to where it went. Its methods that use
// the core are defined after it.
class bridge_stand_in final : public caf::actor_proxy {
 public:
  bridge_stand_in(caf::actor_config& cfg, std::shared_ptr<actor_bridge::core> core, int process, uint64_t id)
      : caf::actor_proxy(cfg), core_(std::move(core)), process_(process), id_(id) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit* ctx) override;
  bool add_backlink(caf::abstract_actor*) override { return false; }
  bool remove_backlink(caf::abstract_actor*) override { return false; }
  void kill_proxy(caf::execution_unit* ctx, caf::error reason) override {
    down_ = true;
    cleanup(std::move(reason), ctx);
  }

  void set_movable() {
    std::lock_guard<std::mutex> lock(mu_);
    movable_ = true;
  }
  // The link to `peer` failed. elsewhere: this stand-in points to another process (or has
  // moved here); held: it points there and waits for a move; down: it points there and
  // cannot move, so it goes down.
  enum class loss { elsewhere, held, down };
  loss lost(int peer) {
    std::lock_guard<std::mutex> lock(mu_);
    if (local_ || process_ != peer) return loss::elsewhere;
    if (!movable_) return loss::down;
    held_ = true;
    return loss::held;
  }
  // From now on to `process`'s actor `id`, or to `local` (this process's) when it is set;
  // what waited goes first, in order. Not movable again.
  void move_to(int process, uint64_t id, caf::actor local);

 private:
  void deliver(caf::mailbox_element_ptr what, caf::execution_unit* ctx);  // mu_ held
  void bounce(caf::mailbox_element& what, const char* why) {
    if (what.mid.is_request() && what.sender)
      what.sender->enqueue(
          caf::make_mailbox_element(caf::strong_actor_ptr{ctrl()}, what.mid.response_id(), {},
                                    caf::make_message(caf::make_error(caf::sec::request_receiver_down, why))),
          nullptr);
  }
  std::weak_ptr<actor_bridge::core> core_;
  std::mutex mu_;  // guards the target and what waits; held while delivering, so one order
  int process_;
  uint64_t id_;
  caf::actor local_;  // moved into this process
  bool movable_ = false, held_ = false;
  std::vector<caf::mailbox_element_ptr> waiting_;  // while held
  std::atomic<bool> down_{false};                  // its actor ended, or the link to it is gone
};

bridge_stand_in* as_stand_in(const caf::actor& a) {
  return static_cast<bridge_stand_in*>(caf::actor_cast<caf::abstract_actor*>(a));
}

}  // namespace

struct actor_bridge::core : std::enable_shared_from_this<actor_bridge::core> {
  struct outbox {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<frame> q;
    bool closing = false;  // send what is queued, then k_end
    bool ended = false;    // k_end is queued or sent: nothing more goes out
    bool dead = false;     // the link failed or the bridge stopped: drop everything
  };
  struct pending_request {
    int process;
    caf::strong_actor_ptr requester, stand_in;
    caf::message_id mid;
  };

  caf::actor_system* sys;
  std::shared_ptr<communicator> group;
  bool trace = std::getenv("TROUPE_BRIDGE_TRACE") != nullptr;  // every frame to stderr
  std::function<void(int, const std::string&)> on_link_error;
  std::map<uint64_t, caf::actor> exposed;  // fixed once the threads run
  std::vector<std::unique_ptr<outbox>> outboxes;
  std::vector<caf::actor> sinks;  // per peer: where the answers to its requests arrive

  std::mutex mu;  // guards what follows
  std::map<std::pair<int, uint64_t>, caf::actor> stand_ins;
  // Stand-ins that moved to another process's actor (k_move), by where they went.
  std::multimap<std::pair<int, uint64_t>, caf::actor> moved;
  std::map<uint64_t, pending_request> pending;
  std::vector<std::string> failed;  // per peer: why its link failed ("" while up)
  uint64_t next_req = 1;
  bool closing = false;
  int exposed_running = 0;  // exposed actors whose end has not been sent yet
  std::condition_variable all_ended;

  std::vector<std::thread> threads;

  std::vector<char> encode(caf::message msg) {
    std::vector<char> buf;
    caf::binary_serializer out{*sys, buf};
    if (auto err = out(msg))
      throw std::runtime_error("actor_bridge: cannot serialize " + caf::to_string(msg) + ": " + sys->render(err));
    return buf;
  }

  caf::message decode(const char* buf, size_t bytes) {
    caf::binary_deserializer in{*sys, buf, bytes};
    caf::message msg;
    if (auto err = in(msg)) throw std::runtime_error("a payload that does not decode (" + sys->render(err) + ")");
    if (in.remaining() != 0)
      throw std::runtime_error("a payload with " + std::to_string(in.remaining()) + " bytes after its message");
    return msg;
  }

  // Queues a frame for `peer`; false if its link is down (or the bridge has ended).
  bool post(int peer, uint64_t k, uint64_t id, uint64_t req, std::vector<char> payload) {
    if (trace)
      std::fprintf(stderr, "[bridge %d] -> %d %s id %llu req %llu bytes %zu\n", group->rank(), peer, kind_name(k),
                   (unsigned long long)id, (unsigned long long)req, payload.size());
    outbox& o = *outboxes[size_t(peer)];
    std::lock_guard<std::mutex> lock(o.mu);
    if (o.dead || o.ended) return false;
    frame f;
    f.h.kind = k;
    f.h.id = id;
    f.h.req = req;
    f.h.bytes = payload.size();
    f.payload = std::move(payload);
    o.q.push_back(std::move(f));
    o.cv.notify_one();
    return true;
  }

  void answer(const pending_request& p, caf::message msg) {
    p.requester->enqueue(caf::make_mailbox_element(p.stand_in, p.mid.response_id(), {}, std::move(msg)), nullptr);
  }

  // A request through stand-in `self` for `process`'s actor `id`.
  void request(int process, uint64_t id, caf::strong_actor_ptr self, caf::mailbox_element& what) {
    if (!what.sender) return;  // nobody to answer
    uint64_t req;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!failed[size_t(process)].empty()) {
        answer({process, what.sender, self, what.mid},
               caf::make_message(caf::make_error(caf::sec::request_receiver_down, failed[size_t(process)])));
        return;
      }
      req = next_req++;
      pending[req] = {process, what.sender, self, what.mid};
    }
    std::vector<char> payload;
    try {
      payload = encode(what.move_content_to_message());
    } catch (const std::exception& e) {
      fail_request(req, caf::make_error(caf::sec::invalid_argument, e.what()));
      return;
    }
    if (!post(process, k_request, id, req, std::move(payload)))
      fail_request(req, caf::make_error(caf::sec::request_receiver_down,
                                        "actor_bridge: the link to process " + std::to_string(process) + " is down"));
  }

  void fail_request(uint64_t req, caf::error err) {
    pending_request p;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = pending.find(req);
      if (it == pending.end()) return;
      p = it->second;
      pending.erase(it);
    }
    answer(p, caf::make_message(std::move(err)));
  }

  // Nothing more will come from `peer`: its stand-ins go down (those still up) and the
  // requests waiting on it fail, with `reason`; later requests to it fail at once. False if
  // it was cut off already.
  bool cut_off(int peer, const std::string& reason, caf::sec code) {
    std::vector<caf::actor> all, gone;  // every stand-in (a moved one is listed under its first id)
    std::vector<pending_request> unanswered;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!failed[size_t(peer)].empty()) return false;
      failed[size_t(peer)] = reason;
      for (auto& [key, a] : stand_ins) all.push_back(a);
      for (auto it = pending.begin(); it != pending.end();)
        if (it->second.process == peer) {
          unanswered.push_back(it->second);
          it = pending.erase(it);
        } else {
          ++it;
        }
    }
    // Those that point there go down, but the movable ones, which wait for a move.
    for (const caf::actor& a : all)
      if (as_stand_in(a)->lost(peer) == bridge_stand_in::loss::down) gone.push_back(a);
    for (const caf::actor& a : gone) kill(a, caf::make_error(code, reason));
    for (const pending_request& p : unanswered)
      answer(p, caf::make_message(caf::make_error(caf::sec::request_receiver_down, reason)));
    return true;
  }

  // `peer` sent its last frame: its actors have all ended (their ends came before), and it
  // answers nothing more (a request that crossed its end fails here).
  void peer_ended(int peer) {
    cut_off(peer, "actor_bridge: process " + std::to_string(peer) + " has ended", caf::sec::request_receiver_down);
  }

  // The link to `peer` is gone: its stand-ins go down and its requests fail, with `why`.
  void fail_peer(int peer, const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!failed[size_t(peer)].empty()) return;
    }
    {
      outbox& o = *outboxes[size_t(peer)];
      std::lock_guard<std::mutex> lock(o.mu);
      o.dead = true;
      o.q.clear();
      o.cv.notify_all();
    }
    const std::string reason = "actor_bridge: the link to process " + std::to_string(peer) + " failed: " + why;
    if (!cut_off(peer, reason, caf::sec::runtime_error)) return;  // its other thread, or its orderly end, came first
    bool report;
    {
      std::lock_guard<std::mutex> lock(mu);
      report = !closing;
    }
    if (report && on_link_error) on_link_error(peer, reason);
  }

  static void kill(const caf::actor& a, caf::error reason) {
    static_cast<caf::actor_proxy*>(caf::actor_cast<caf::abstract_actor*>(a))->kill_proxy(nullptr, std::move(reason));
  }

  void send_loop(int peer) {
    outbox& o = *outboxes[size_t(peer)];
    for (;;) {
      frame f;
      {
        std::unique_lock<std::mutex> lock(o.mu);
        o.cv.wait(lock, [&] { return !o.q.empty() || o.closing || o.dead; });
        if (o.dead) return;
        if (o.q.empty()) {  // closing, everything sent
          f.h.kind = k_end;
          o.ended = true;
        } else {
          f = std::move(o.q.front());
          o.q.pop_front();
        }
      }
      try {
        group->send(peer, kBridgeTag, &f.h, sizeof f.h, dtype::u8);
        if (!f.payload.empty()) group->send(peer, kBridgeTag, f.payload.data(), f.payload.size(), dtype::u8);
      } catch (const std::exception& e) {
        fail_peer(peer, e.what());
        return;
      }
      if (f.h.kind == k_end) return;
    }
  }

  caf::actor target(uint64_t id, const header& h) {
    auto it = exposed.find(id);
    if (it == exposed.end())
      throw std::runtime_error(std::string("a ") + kind_name(h.kind) + " frame for actor id " + std::to_string(id) +
                               ", which this process does not expose");
    return it->second;
  }

  // Every receive waits as long as the link lives (the group's deadline is a day): an
  // error means the link or the group failed, or the peer broke the protocol, and either
  // way this link is done.
  void recv_loop(int peer) {
    try {
      for (;;) {
        header h;
        group->recv(peer, kBridgeTag, &h, sizeof h, dtype::u8);
        if (h.magic != kMagic) throw std::runtime_error("a frame header without the bridge's magic");
        if (h.kind < k_send || h.kind > k_move)
          throw std::runtime_error("a frame of unknown kind " + std::to_string(h.kind) + " (expected 1..7)");
        if (h.bytes > kMaxPayload)
          throw std::runtime_error("a " + std::string(kind_name(h.kind)) + " frame of " + std::to_string(h.bytes) +
                                   " bytes (at most 2^34)");
        if (h.kind == k_end) {
          peer_ended(peer);
          return;
        }
        // Not zero-filled: a header that claims more than comes costs no pages.
        std::unique_ptr<char[]> payload(new char[h.bytes ? h.bytes : 1]);
        if (h.bytes) group->recv(peer, kBridgeTag, payload.get(), h.bytes, dtype::u8);
        caf::message msg = decode(payload.get(), h.bytes);
        dispatch(peer, h, std::move(msg));
      }
    } catch (const std::exception& e) {
      fail_peer(peer, e.what());
      // With the link up, a frame broke the protocol (a bad header, a payload that does not
      // decode, a message of the wrong size): the stream is out of step for good, and the
      // peer must hear it too. The group is the bridge's own.
      if (group->peer_failure(peer).empty())
        group->abort(std::string("actor_bridge: process ") + std::to_string(group->rank()) +
                     " received a bad frame from process " + std::to_string(peer) + ": " + e.what());
    }
  }

  static caf::error reason_of(const caf::message& msg) {
    if (!msg.match_elements<caf::error>()) throw std::runtime_error("an exit or down frame without a reason");
    return msg.get_as<caf::error>(0);
  }

  void dispatch(int peer, const header& h, caf::message msg) {
    if (trace)
      std::fprintf(stderr, "[bridge %d] <- %d %s id %llu req %llu %s\n", group->rank(), peer, kind_name(h.kind),
                   (unsigned long long)h.id, (unsigned long long)h.req, caf::to_string(msg).substr(0, 60).c_str());
    switch (h.kind) {
      case k_send:
        target(h.id, h)->enqueue(nullptr, caf::make_message_id(), std::move(msg), nullptr);
        break;
      case k_request: {
        if (h.req == 0 || h.req > caf::message_id::request_id_mask)
          throw std::runtime_error("a request frame with request number " + std::to_string(h.req));
        // As a request from the peer's sink, whose answer goes back as k_reply.
        const caf::message_id mid{(caf::message_id::normal_message_category << caf::message_id::category_offset) |
                                  h.req};
        target(h.id, h)->enqueue(caf::actor_cast<caf::strong_actor_ptr>(sinks[size_t(peer)]), mid, std::move(msg),
                                 nullptr);
        break;
      }
      case k_reply: {
        pending_request p;
        {
          std::lock_guard<std::mutex> lock(mu);
          auto it = pending.find(h.req);
          if (it == pending.end() && h.req < next_req) return;  // failed already (that process ended)
          if (it == pending.end() || it->second.process != peer)
            throw std::runtime_error("a reply to request " + std::to_string(h.req) + ", which was never sent there");
          p = it->second;
          pending.erase(it);
        }
        answer(p, std::move(msg));
        break;
      }
      case k_exit:
        target(h.id, h)->enqueue(nullptr, caf::make_message_id(),
                                 caf::make_message(caf::exit_msg{caf::actor_addr{}, reason_of(msg)}), nullptr);
        break;
      case k_down: {
        std::vector<caf::actor> gone;  // its stand-in, and those that moved to it
        {
          std::lock_guard<std::mutex> lock(mu);
          auto it = stand_ins.find({peer, h.id});
          if (it != stand_ins.end()) gone.push_back(it->second);
          auto [from, to] = moved.equal_range({peer, h.id});
          for (; from != to; ++from) gone.push_back(from->second);
        }
        const caf::error reason = reason_of(msg);
        for (const caf::actor& a : gone) kill(a, reason);
        break;
      }
      case k_move: {
        if (!msg.match_elements<int32_t, uint64_t, uint64_t>())
          throw std::runtime_error("a move frame without (process, id, new id)");
        const int32_t from = msg.get_as<int32_t>(0);
        const uint64_t id = msg.get_as<uint64_t>(1), new_id = msg.get_as<uint64_t>(2);
        if (from < 0 || from >= group->size() || from == peer || from == group->rank())
          throw std::runtime_error("a move frame for an actor of process " + std::to_string(from));
        caf::actor a;
        {
          std::lock_guard<std::mutex> lock(mu);
          auto it = stand_ins.find({from, id});
          if (it == stand_ins.end()) return;  // this process never sends to it
          a = it->second;
          moved.emplace(std::make_pair(peer, new_id), a);  // its end comes under the new id
        }
        as_stand_in(a)->move_to(peer, new_id, {});
        break;
      }
    }
  }

  void broadcast_down(uint64_t id, const caf::error& reason) {
    std::vector<char> payload = encode(caf::make_message(reason));
    for (int q = 0; q < group->size(); ++q)
      if (q != group->rank()) post(q, k_down, id, 0, payload);
  }

  void stop_threads() {
    for (auto& o : outboxes) {
      std::lock_guard<std::mutex> lock(o->mu);
      o->dead = true;
      o->cv.notify_all();
    }
    for (auto& t : threads) t.join();
    threads.clear();
  }
};

void bridge_stand_in::enqueue(caf::mailbox_element_ptr what, caf::execution_unit* ctx) {
  if (!what || what->mid.is_response()) return;  // nothing answers through a stand-in
  if (down_) return bounce(*what, "actor_bridge: the remote actor has ended");
  std::lock_guard<std::mutex> lock(mu_);
  if (held_) {
    waiting_.push_back(std::move(what));
    return;
  }
  deliver(std::move(what), ctx);
}

void bridge_stand_in::deliver(caf::mailbox_element_ptr what, caf::execution_unit* ctx) {
  if (local_) {
    local_->enqueue(std::move(what), ctx);
    return;
  }
  auto core = core_.lock();
  if (!core) return bounce(*what, "actor_bridge: the bridge has ended");
  if (what->content().match_elements<caf::exit_msg>()) {
    const caf::error reason = what->content().get_as<caf::exit_msg>(0).reason;
    core->post(process_, k_exit, id_, 0, core->encode(caf::make_message(reason)));
    return;
  }
  if (what->mid.is_request()) {
    core->request(process_, id_, caf::strong_actor_ptr{ctrl()}, *what);
    return;
  }
  std::vector<char> payload;
  try {
    payload = core->encode(what->move_content_to_message());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe: %s (message dropped)\n", e.what());
    return;
  }
  core->post(process_, k_send, id_, 0, std::move(payload));
}

void bridge_stand_in::move_to(int process, uint64_t id, caf::actor local) {
  std::lock_guard<std::mutex> lock(mu_);
  process_ = process;
  id_ = id;
  local_ = std::move(local);
  movable_ = held_ = false;
  std::vector<caf::mailbox_element_ptr> waited = std::move(waiting_);
  waiting_.clear();
  for (auto& w : waited) deliver(std::move(w), nullptr);
}

namespace {

// Where this process's actors answer the requests of process `peer`: each answer goes
// back to it as a reply frame.
class reply_sink final : public caf::actor_proxy {
 public:
  reply_sink(caf::actor_config& cfg, std::shared_ptr<actor_bridge::core> core, int peer)
      : caf::actor_proxy(cfg), core_(std::move(core)), peer_(peer) {}

  void enqueue(caf::mailbox_element_ptr what, caf::execution_unit*) override {
    if (!what || !what->mid.is_response()) return;
    auto core = core_.lock();
    if (!core) return;
    const uint64_t req = what->mid.integer_value() & caf::message_id::request_id_mask;
    std::vector<char> payload;
    try {
      payload = core->encode(what->move_content_to_message());
    } catch (const std::exception& e) {
      payload = core->encode(caf::make_message(caf::make_error(caf::sec::invalid_argument, e.what())));
    }
    core->post(peer_, k_reply, 0, req, std::move(payload));
  }

  bool add_backlink(caf::abstract_actor*) override { return false; }
  bool remove_backlink(caf::abstract_actor*) override { return false; }
  void kill_proxy(caf::execution_unit* ctx, caf::error reason) override { cleanup(std::move(reason), ctx); }

 private:
  std::weak_ptr<actor_bridge::core> core_;
  int peer_;
};

caf::actor make_sink(caf::actor_system& sys, std::shared_ptr<actor_bridge::core> core, int peer) {
  caf::actor_config cfg;
  return caf::make_actor<reply_sink, caf::actor>(sys.next_actor_id(), sys.node(), &sys, cfg, std::move(core), peer);
}

}  // namespace

actor_bridge::actor_bridge(caf::actor_system& sys, std::shared_ptr<communicator> group,
                           std::function<void(int, const std::string&)> on_link_error)
    : core_(std::make_shared<core>()) {
  core_->sys = &sys;
  core_->group = std::move(group);
  core_->group->deadline = std::chrono::hours(24);
  core_->on_link_error = std::move(on_link_error);
  const int n = core_->group->size();
  core_->failed.assign(size_t(n), "");
  for (int q = 0; q < n; ++q) {
    core_->outboxes.push_back(std::make_unique<core::outbox>());
    core_->sinks.push_back(q == core_->group->rank() ? caf::actor{} : make_sink(sys, core_, q));
  }
}

void actor_bridge::expose(uint64_t id, const caf::actor& a) {
  if (!core_->threads.empty()) throw std::logic_error("actor_bridge::expose after start()");
  if (!core_->exposed.emplace(id, a).second)
    throw std::logic_error("actor_bridge: actor id " + std::to_string(id) + " exposed twice");
  std::weak_ptr<core> weak = core_;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    ++core_->exposed_running;
  }
  a->attach_functor([weak, id](const caf::error& reason) {
    auto c = weak.lock();
    if (!c) return;
    try {
      c->broadcast_down(id, reason);
    } catch (const std::exception& e) {  // a reason that does not serialize: its end, without it
      try {
        c->broadcast_down(id, caf::make_error(caf::sec::runtime_error, e.what()));
      } catch (const std::exception&) {
      }
    }
    std::lock_guard<std::mutex> lock(c->mu);
    if (--c->exposed_running == 0) c->all_ended.notify_all();
  });
}

caf::actor actor_bridge::remote(int process, uint64_t id) {
  if (process < 0 || process >= core_->group->size() || process == core_->group->rank())
    throw std::logic_error("actor_bridge::remote: no other process " + std::to_string(process));
  std::lock_guard<std::mutex> lock(core_->mu);
  caf::actor& a = core_->stand_ins[{process, id}];
  if (!a) {
    caf::actor_system& sys = *core_->sys;
    caf::actor_config cfg;
    a = caf::make_actor<bridge_stand_in, caf::actor>(sys.next_actor_id(), sys.node(), &sys, cfg, core_, process, id);
    if (!core_->failed[size_t(process)].empty())
      core::kill(a, caf::make_error(caf::sec::runtime_error, core_->failed[size_t(process)]));
  }
  return a;
}

void actor_bridge::movable(int process, uint64_t id) {
  if (!core_->threads.empty()) throw std::logic_error("actor_bridge::movable after start()");
  as_stand_in(remote(process, id))->set_movable();
}

void actor_bridge::move(int process, uint64_t id, const caf::actor& local, uint64_t local_id) {
  const int me = core_->group->rank();
  if (process < 0 || process >= core_->group->size() || process == me)
    throw std::logic_error("actor_bridge::move: no other process " + std::to_string(process));
  // The others first: what they send after this frame reaches the actor here.
  const std::vector<char> payload = core_->encode(caf::make_message(int32_t(process), id, local_id));
  for (int q = 0; q < core_->group->size(); ++q)
    if (q != me && q != process) core_->post(q, k_move, 0, 0, payload);
  caf::actor a;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    auto it = core_->stand_ins.find({process, id});
    if (it != core_->stand_ins.end()) a = it->second;
  }
  if (!a) return;
  as_stand_in(a)->move_to(me, local_id, local);
  local->attach_functor([a](const caf::error& reason) { core::kill(a, reason); });  // its end is the stand-in's
}

void actor_bridge::start() {
  if (!core_->threads.empty()) return;
  const int n = core_->group->size(), me = core_->group->rank();
  for (int q = 0; q < n; ++q) {
    if (q == me) continue;
    core_->threads.emplace_back([c = core_.get(), q] { c->send_loop(q); });
    core_->threads.emplace_back([c = core_.get(), q] { c->recv_loop(q); });
  }
}

void actor_bridge::close() {
  {
    // The news of each exposed actor's end goes out before the end of the stream (the
    // caller may have heard of that end first: CAF runs the later attachments first).
    std::unique_lock<std::mutex> lock(core_->mu);
    core_->all_ended.wait(lock, [&] { return core_->exposed_running == 0; });
    if (core_->closing) return;
    core_->closing = true;
  }
  for (auto& o : core_->outboxes) {
    std::lock_guard<std::mutex> lock(o->mu);
    o->closing = true;
    o->cv.notify_all();
  }
  // Each sender thread ends after its k_end, each receiver after the peer's k_end.
  for (auto& t : core_->threads) t.join();
  core_->threads.clear();
}

actor_bridge::~actor_bridge() {
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    core_->closing = true;
  }
  if (!core_->threads.empty()) {
    core_->group->abort("the actor bridge was torn down");
    core_->stop_threads();
  }
  std::vector<caf::actor> all;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    for (auto& [key, a] : core_->stand_ins) all.push_back(a);
    core_->stand_ins.clear();
  }
  for (const caf::actor& a : all) core::kill(a, caf::make_error(caf::exit_reason::user_shutdown));
  for (const caf::actor& s : core_->sinks)
    if (s) core::kill(s, caf::make_error(caf::exit_reason::user_shutdown));
  core_->exposed.clear();
}

}  // namespace troupe
