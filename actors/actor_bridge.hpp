#pragma once
// Actors in other processes, reached over a transport group (one rank per process), so
// that actors written for one process (param_shard, ps_worker, ps_coordinator) run
// unchanged across processes. A process exposes some of its actors under ids that every
// process agrees on, and gets a stand-in (remote(process, id)) for each actor another
// process exposes. A stand-in is a CAF actor proxy: whatever is sent to it is serialized
// (CAF's binary serializer; tensors as one raw block) in the sender's own thread and
// queued for that process, so the messages of one sender arrive in the order sent, and
// nothing a sender sent before it ended is overtaken by the news of its end.
//
//   send            -> the target gets it (no sender: replies to plain sends are dropped)
//   request         -> the target's answer (a value, a promise delivered later, or an
//                      error) comes back to the requester as the response
//   send_exit       -> the target gets an exit message with the same reason
//   monitor         -> down_msg with the target's own exit reason when it ends, or an
//                      error naming the process when the link to that process fails
//
// On the wire, per message: a header of 5 little-endian u64 (magic, kind, actor id,
// request number, payload bytes), then the payload. Frames that fail a check close the
// link to that process with an error that says what was wrong. Each peer process has a
// sender thread (so no actor blocks on the transport) and a receiver thread.
//
// Ending: a process closes once its own actors have ended; the news of their ends goes out
// before its last frame (k_end), and a request that reaches it after that fails at the
// requester when the k_end arrives, as a request to an ended actor does.
//
// Moving an actor (a parameter shard whose standby copy in another process takes over
// when the shard's process dies): a stand-in marked movable() is not taken down when the
// link to its process fails; what is sent to it waits in it, in order, until move() in
// the process that now holds the actor (or that process's k_move frame, which move()
// sends to every other process first) points it there. A request that was on its way
// when the link failed still fails: its answer is lost with the process.
//
// Message contents must be serializable and registered (register_message_types); actor
// handles inside a message do not cross (each process builds its own handles).
// TROUPE_BRIDGE_TRACE=1 prints every frame sent and received to stderr.
#include <functional>
#include <memory>
#include <string>

#include "actors/messages.hpp"
#include "transport/communicator.hpp"

namespace troupe {

class actor_bridge {
 public:
  // `group`: one rank per process, the bridge's own (it sets the group's deadline to a day:
  // a receive waits as long as its link lives, and the transport's failure detection, a
  // closed link or silence past TROUPE_SILENCE_MS, ends it); this process is
  // group->rank(). A frame that breaks the protocol aborts the group. on_link_error is
  // called once per process whose link fails before close() (the stand-ins of its actors
  // are down by then, and requests to them have failed), with the process and why.
  actor_bridge(caf::actor_system& sys, std::shared_ptr<communicator> group,
               std::function<void(int process, const std::string& why)> on_link_error = {});
  actor_bridge(const actor_bridge&) = delete;
  actor_bridge& operator=(const actor_bridge&) = delete;
  // Without close(): aborts the group and joins the threads; stand-ins go down.
  ~actor_bridge();

  // This process's actor `id` becomes reachable from the others. Before start().
  void expose(uint64_t id, const caf::actor& a);
  // The stand-in for actor `id` of `process` (another process's rank).
  caf::actor remote(int process, uint64_t id);
  // The stand-in for actor `id` of `process` outlives a failure of that process's link:
  // messages to it wait until the actor is moved (above). Before start().
  void movable(int process, uint64_t id);
  // This process now holds actor `id` of `process` (which failed) as its own `local`,
  // exposed under `local_id`: every other process is told (a k_move frame, sent before
  // this returns), then this process's stand-in delivers to `local`, what waited in it
  // first. Once per actor; a stand-in that moved is not movable again.
  void move(int process, uint64_t id, const caf::actor& local, uint64_t local_id);
  // Starts the threads: frames are read and delivered from now on.
  void start();
  // The orderly end: waits until every exposed actor has ended (and its end has gone
  // out), sends what is queued, tells every other process that this one sends nothing
  // more, and waits until each has said the same. Every process calls it, once its own
  // actors are done.
  void close();

  struct core;

 private:
  std::shared_ptr<core> core_;
};

}  // namespace troupe
