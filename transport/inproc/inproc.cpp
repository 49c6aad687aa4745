#include "transport/inproc/inproc.hpp"

#include <cstring>

#include "runtime/check.hpp"

namespace troupe {

void inproc_world::put(int from, int to, uint64_t tag, std::vector<uint8_t> bytes) {
  mailbox& box = boxes_.at(size_t(to));
  {
    std::lock_guard<std::mutex> lock(box.mu);
    box.queued[{from, tag}].push_back(std::move(bytes));
  }
  box.cv.notify_all();
}

void inproc_world::abort(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(abort_mu_);
    aborted_ = why.empty() ? "aborted" : why;
  }
  for (auto& box : boxes_) {
    std::lock_guard<std::mutex> lock(box.mu);  // a waiter between its check and its wait must see it
    box.cv.notify_all();
  }
}

std::vector<uint8_t> inproc_world::take(int from, int to, uint64_t tag, std::chrono::milliseconds deadline) {
  mailbox& box = boxes_.at(size_t(to));
  std::unique_lock<std::mutex> lock(box.mu);
  auto key = std::make_pair(from, tag);
  std::string why;
  auto aborted = [&] {
    std::lock_guard<std::mutex> a(abort_mu_);
    why = aborted_;
    return !why.empty();
  };
  bool arrived = box.cv.wait_for(lock, deadline, [&] {
    if (aborted()) return true;
    auto it = box.queued.find(key);
    return it != box.queued.end() && !it->second.empty();
  });
  if (!why.empty())
    throw transport_error("inproc: rank " + std::to_string(to) + " stopped waiting for rank " + std::to_string(from) +
                          ": " + why);
  if (!arrived)
    throw transport_error("inproc: rank " + std::to_string(to) + " waited " + std::to_string(deadline.count()) +
                          " ms for tag " + std::to_string(tag) + " from rank " + std::to_string(from));
  auto& q = box.queued[key];
  std::vector<uint8_t> bytes = std::move(q.front());
  q.pop_front();
  if (q.empty()) box.queued.erase(key);
  return bytes;
}

void inproc_communicator::send(int peer, uint64_t tag, const void* data, size_t count, dtype type) {
  TROUPE_CHECK(peer >= 0 && peer < size(), "send to rank ", peer, " of ", size());
  size_t n = count * dtype_size(type);
  std::vector<uint8_t> bytes(n);
  if (n) std::memcpy(bytes.data(), data, n);
  world_->put(rank_, peer, tag, std::move(bytes));
}

void inproc_communicator::recv(int peer, uint64_t tag, void* data, size_t count, dtype type) {
  TROUPE_CHECK(peer >= 0 && peer < size(), "recv from rank ", peer, " of ", size());
  std::vector<uint8_t> bytes = world_->take(peer, rank_, tag, deadline);
  size_t n = count * dtype_size(type);
  if (bytes.size() != n)
    throw transport_error("inproc: rank " + std::to_string(rank_) + " expected " + std::to_string(n) +
                          " bytes from rank " + std::to_string(peer) + ", got " + std::to_string(bytes.size()));
  if (n) std::memcpy(data, bytes.data(), n);
}

}  // namespace troupe
