#pragma once
// Moving tensors between ranks of a group: tagged point-to-point sends and receives, with
// a deadline, so a dead or stuck peer surfaces as an error and never as a hang.
// Collectives (collectives.hpp) are written once over these. Implementations are chosen
// by name: "inproc" (ranks are threads of one process), "tcp" (transport/tcp/; make_group
// links threads of this process over loopback, make_tcp_communicator joins processes),
// "shm" (transport/shm/: shared memory between the processes of one host, tcp to others).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/tensor.hpp"

namespace troupe {

// A peer did not answer within the deadline, or the group was shut down.
class transport_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A send in flight: the transport may still read the sender's buffer until wait() returns.
// Destroying an unwaited handle waits (and swallows the error: the caller is already
// unwinding from another one), so the buffer can never be freed under a reader.
class send_handle {
 public:
  send_handle() = default;  // nothing in flight
  explicit send_handle(std::function<void()> wait) : wait_(std::move(wait)) {}
  send_handle(send_handle&& o) noexcept : wait_(std::move(o.wait_)) { o.wait_ = nullptr; }
  send_handle& operator=(send_handle&& o) noexcept;
  send_handle(const send_handle&) = delete;
  send_handle& operator=(const send_handle&) = delete;
  ~send_handle();
  // Returns once the buffer may be reused; throws transport_error if the transport
  // cannot hand the data over.
  void wait();

 private:
  std::function<void()> wait_;
};

class communicator {
 public:
  virtual ~communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // Sends `count` elements of `type` at `data` to `peer`; returns once the data is handed
  // over (the caller may reuse the buffer).
  virtual void send(int peer, uint64_t tag, const void* data, size_t count, dtype type) = 0;
  // Like send, but the transport may read `data` after the call returns, until the
  // handle's wait(): where ranks share memory (inproc) the receiver reads the sender's
  // buffer itself, and no copy of the data is made. The default sends a copy at once.
  virtual send_handle send_async(int peer, uint64_t tag, const void* data, size_t count, dtype type);
  // Receives exactly `count` elements of `type` from `peer` with `tag` into `data`.
  virtual void recv(int peer, uint64_t tag, void* data, size_t count, dtype type) = 0;
  // Like recv of f32 elements, but adds them into `data` (data[i] += incoming[i], in
  // index order). The default receives into a scratch buffer first; a transport that
  // holds the payload in memory adds straight from it.
  virtual void recv_reduce_sum(int peer, uint64_t tag, float* data, size_t count);
  // Fails every waiting and later receive of the whole group with `why` (a member died:
  // the survivors must not wait out their deadline).
  virtual void abort(const std::string& why) = 0;
  // Why a receive from `peer` would fail now without waiting ("" while nothing is known to
  // be wrong): the group was aborted, or the link to `peer` is down (closed, broken, or
  // silent past the transport's limit). A transport layered over this one (shm over tcp)
  // fails its own waits on what this one has noticed.
  virtual std::string peer_failure(int peer) { (void)peer; return {}; }
  // True if a message from `peer` with `tag` has arrived and a receive would not wait.
  // Transports that cannot tell answer false.
  virtual bool has_message(int peer, uint64_t tag) { (void)peer; (void)tag; return false; }
  std::chrono::milliseconds deadline{30000};
  // How long a receive (and a lent buffer's hand-back) polls before it sleeps, on
  // transports that can poll (inproc). Polling answers a small message in about a
  // microsecond instead of a sleep and wake-up's tens, for a core's time while it polls.
  // Measured on 2 cores: 4 KiB all-reduce of 2 ranks 30 us -> 3.4 us; training with 2
  // replicas got faster too (the last bucket's wait), so it is on by default; 0 turns it off.
  std::chrono::microseconds spin{50};
};

// A communicator seen only through its plain sends and receives: send_async and the
// reducing receive take the interface's default (copying) paths. The baseline that
// benchmarks and tests hold a transport's own fast paths against.
class copying_view : public communicator {
 public:
  explicit copying_view(std::shared_ptr<communicator> c) : inner_(std::move(c)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  void send(int peer, uint64_t tag, const void* d, size_t n, dtype t) override { inner_->send(peer, tag, d, n, t); }
  void recv(int peer, uint64_t tag, void* d, size_t n, dtype t) override { inner_->recv(peer, tag, d, n, t); }
  void abort(const std::string& why) override { inner_->abort(why); }
  std::string peer_failure(int peer) override { return inner_->peer_failure(peer); }

 private:
  std::shared_ptr<communicator> inner_;
};

// A group of `size` ranks, each handed to one thread. Throws input_error for an unknown
// transport name: "unknown transport 'X' (known: inproc, tcp, shm, ucx)".
std::vector<std::shared_ptr<communicator>> make_group(const std::string& transport, int size);

}  // namespace troupe
