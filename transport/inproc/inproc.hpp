#pragma once
// inproc: ranks are threads of one process; a send copies the elements once into the
// receiver's mailbox (keyed by sender and tag) and a receive waits on it, then copies
// (or, for a reducing receive, adds) straight out of that one payload.
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>

#include "transport/communicator.hpp"

namespace troupe {

// A message's bytes, allocated without zero-filling (the sender overwrites them all).
struct inproc_payload {
  std::unique_ptr<uint8_t[]> bytes;
  size_t size = 0;
};

class inproc_world {
 public:
  explicit inproc_world(int size) : size_(size), boxes_(size_t(size)) {}
  int size() const { return size_; }
  void put(int from, int to, uint64_t tag, inproc_payload payload);
  inproc_payload take(int from, int to, uint64_t tag, std::chrono::milliseconds deadline);
  void abort(const std::string& why);

 private:
  struct mailbox {
    std::mutex mu;
    std::condition_variable cv;
    std::map<std::pair<int, uint64_t>, std::deque<inproc_payload>> queued;  // (from, tag)
  };
  int size_;
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
  void recv(int peer, uint64_t tag, void* data, size_t count, dtype type) override;
  void recv_reduce_sum(int peer, uint64_t tag, float* data, size_t count) override;
  void abort(const std::string& why) override { world_->abort(why); }

 private:
  inproc_payload take_checked(int peer, uint64_t tag, size_t bytes);
  std::shared_ptr<inproc_world> world_;
  int rank_;
};

}  // namespace troupe
