#pragma once
// inproc: ranks are threads of one process. A send copies the elements once into the
// receiver's mailbox (keyed by sender and tag) and a receive waits on it, then copies
// (or, for a reducing receive, adds) straight out of that one payload. send_async copies
// nothing when the receiver is there in time: the mailbox gets a pointer to the sender's
// own buffer, the receiver reads (or adds) straight from it and hands it back, and the
// sender's wait() returns then; a loan still untaken at wait() is turned into a copy.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "transport/communicator.hpp"

namespace troupe {

// A sender's buffer lent to its receiver until `returned`.
struct inproc_loan {
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<bool> returned{false};
  void give_back();
};

// A message's bytes: its own copy (allocated without zero-filling: the sender overwrites
// them all), or the sender's buffer on loan, given back when the payload is dropped
// (read, or thrown away by an abort or a cancelled send).
struct inproc_payload {
  std::unique_ptr<uint8_t[]> bytes;
  const uint8_t* lent = nullptr;
  std::shared_ptr<inproc_loan> loan;
  size_t size = 0;
  const uint8_t* data() const { return lent ? lent : bytes.get(); }
  inproc_payload() = default;
  inproc_payload(inproc_payload&&) = default;
  inproc_payload& operator=(inproc_payload&& o) noexcept;
  ~inproc_payload();
};

class inproc_world {
 public:
  explicit inproc_world(int size)
      : size_(size), crowded_(unsigned(size) > std::max(1u, std::thread::hardware_concurrency())), boxes_(size_t(size)) {}
  int size() const { return size_; }
  void put(int from, int to, uint64_t tag, inproc_payload payload);
  // Waits for the message; spins up to `spin` first (a message that arrives within it costs
  // no sleep and wake-up of the receiver, the latency of small messages).
  inproc_payload take(int from, int to, uint64_t tag, std::chrono::milliseconds deadline,
                      std::chrono::microseconds spin = {});
  // The sender wants its buffer back. A loan the receiver has not taken yet becomes a copy
  // in the mailbox at once (the sender never waits for a receiver that is late or gone:
  // that receiver's own deadline or the group's abort fails it, as for a plain send); one
  // the receiver has taken is being read, and is waited for.
  void reclaim(int from, int to, const std::shared_ptr<inproc_loan>& loan, std::chrono::microseconds spin = {});
  void abort(const std::string& why);
  std::string abort_reason();  // "" until abort()

 private:
  struct mailbox {
    std::mutex mu;
    std::condition_variable cv;
    std::atomic<uint64_t> puts{0};  // bumped by every put: what a spinning receiver watches
    std::map<std::pair<int, uint64_t>, std::deque<inproc_payload>> queued;  // (from, tag)
  };
  int size_;
  bool crowded_;  // more ranks than cores: pollers yield
  std::vector<mailbox> boxes_;
  std::mutex abort_mu_;
  std::string aborted_;  // non-empty once the group is aborted
};

class inproc_communicator : public communicator {
 public:
  inproc_communicator(std::shared_ptr<inproc_world> world, int rank) : world_(std::move(world)), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return world_->size(); }
  void send(int peer, uint64_t tag, const void* data, size_t count, dtype type) override;
  send_handle send_async(int peer, uint64_t tag, const void* data, size_t count, dtype type) override;
  void recv(int peer, uint64_t tag, void* data, size_t count, dtype type) override;
  void recv_reduce_sum(int peer, uint64_t tag, float* data, size_t count) override;
  void abort(const std::string& why) override { world_->abort(why); }
  // The ranks are threads of one process: only an abort makes a peer unreachable.
  std::string peer_failure(int) override { return world_->abort_reason(); }

 private:
  inproc_payload take_checked(int peer, uint64_t tag, size_t bytes);
  std::shared_ptr<inproc_world> world_;
  int rank_;
};

}  // namespace troupe
