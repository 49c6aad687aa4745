#include "transport/inproc/inproc.hpp"

#include <cstring>

#include "runtime/check.hpp"

namespace troupe {

void inproc_world::put(int from, int to, uint64_t tag, inproc_payload payload) {
  mailbox& box = boxes_.at(size_t(to));
  {
    std::lock_guard<std::mutex> lock(box.mu);
    box.queued[{from, tag}].push_back(std::move(payload));
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

inproc_payload inproc_world::take(int from, int to, uint64_t tag, std::chrono::milliseconds deadline) {
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
  inproc_payload payload = std::move(q.front());
  q.pop_front();
  if (q.empty()) box.queued.erase(key);
  return payload;
}

void inproc_communicator::send(int peer, uint64_t tag, const void* data, size_t count, dtype type) {
  TROUPE_CHECK(peer >= 0 && peer < size(), "send to rank ", peer, " of ", size());
  inproc_payload p;
  p.size = count * dtype_size(type);
  p.bytes.reset(new uint8_t[p.size ? p.size : 1]);
  if (p.size) std::memcpy(p.bytes.get(), data, p.size);
  world_->put(rank_, peer, tag, std::move(p));
}

inproc_payload inproc_communicator::take_checked(int peer, uint64_t tag, size_t bytes) {
  TROUPE_CHECK(peer >= 0 && peer < size(), "recv from rank ", peer, " of ", size());
  inproc_payload p = world_->take(peer, rank_, tag, deadline);
  if (p.size != bytes)
    throw transport_error("inproc: rank " + std::to_string(rank_) + " expected " + std::to_string(bytes) +
                          " bytes from rank " + std::to_string(peer) + ", got " + std::to_string(p.size));
  return p;
}

void inproc_communicator::recv(int peer, uint64_t tag, void* data, size_t count, dtype type) {
  size_t n = count * dtype_size(type);
  inproc_payload p = take_checked(peer, tag, n);
  if (n) std::memcpy(data, p.bytes.get(), n);
}

void inproc_communicator::recv_reduce_sum(int peer, uint64_t tag, float* data, size_t count) {
  inproc_payload p = take_checked(peer, tag, count * sizeof(float));
  const float* in = reinterpret_cast<const float*>(p.bytes.get());  // new[] storage: aligned for float
  for (size_t i = 0; i < count; ++i) data[i] += in[i];
}

}  // namespace troupe
