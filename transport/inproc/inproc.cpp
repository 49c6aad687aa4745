#include "transport/inproc/inproc.hpp"

#include <algorithm>
#include <cstring>
#include <thread>

#include "runtime/check.hpp"
#include "transport/cpu_relax.hpp"

namespace troupe {

namespace {

// Polls done() for up to `spin`. With a core per rank, by pause-spinning all along; with
// more ranks than cores, two microseconds of that and then yielding the core between
// looks, so a peer that shares this core gets to run and answer instead of waiting out the
// spin (a yield costs several microseconds on a VM: not worth it with cores to spare).
template <class Done>
void poll_until(Done done, std::chrono::microseconds spin, bool crowded) {
  const auto start = std::chrono::steady_clock::now(), until = start + spin;
  const auto hot = crowded ? start + std::chrono::microseconds(2) : until;
  for (int i = 0; !done(); ++i) {
    if ((i & 15) != 15) {
      cpu_relax();
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= until) return;
    if (now >= hot) std::this_thread::yield();
  }
}

}  // namespace

void inproc_loan::give_back() {
  {
    std::lock_guard<std::mutex> lock(mu);
    returned = true;
  }
  cv.notify_all();
}

inproc_payload& inproc_payload::operator=(inproc_payload&& o) noexcept {
  if (this != &o) {
    if (loan) loan->give_back();
    bytes = std::move(o.bytes);
    lent = o.lent;
    loan = std::move(o.loan);
    size = o.size;
  }
  return *this;
}

inproc_payload::~inproc_payload() {
  if (loan) loan->give_back();
}

std::string inproc_world::abort_reason() {
  std::lock_guard<std::mutex> a(abort_mu_);
  return aborted_;
}

void inproc_world::put(int from, int to, uint64_t tag, inproc_payload payload) {
  mailbox& box = boxes_.at(size_t(to));
  {
    std::lock_guard<std::mutex> lock(box.mu);
    box.queued[{from, tag}].push_back(std::move(payload));
    box.puts.fetch_add(1, std::memory_order_release);
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

inproc_payload inproc_world::take(int from, int to, uint64_t tag, std::chrono::milliseconds deadline,
                                  std::chrono::microseconds spin) {
  mailbox& box = boxes_.at(size_t(to));
  std::unique_lock<std::mutex> lock(box.mu);
  auto key = std::make_pair(from, tag);
  if (spin.count() > 0 && box.queued.count(key) == 0) {
    // Poll the mailbox's put counter (no lock held) until something arrives or the spin is
    // over; then look under the lock as usual.
    const uint64_t seen = box.puts.load(std::memory_order_acquire);
    lock.unlock();
    poll_until([&] { return box.puts.load(std::memory_order_acquire) != seen; }, spin, crowded_);
    lock.lock();
  }
  std::string why;
  auto aborted = [&] {
    why = abort_reason();
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

void inproc_world::reclaim(int from, int to, const std::shared_ptr<inproc_loan>& loan, std::chrono::microseconds spin) {
  if (spin.count() > 0) {  // the receiver is usually reading it right now: poll a moment
    poll_until([&] { return loan->returned.load(std::memory_order_acquire); }, spin, crowded_);
  }
  {
    std::lock_guard<std::mutex> lock(loan->mu);
    if (loan->returned.load()) return;
  }
  {
    mailbox& box = boxes_.at(size_t(to));
    std::lock_guard<std::mutex> lock(box.mu);
    for (auto& [key, q] : box.queued) {
      if (key.first != from) continue;
      for (auto& p : q)
        if (p.loan == loan) {  // not taken yet: the receiver gets a copy instead
          p.bytes.reset(new uint8_t[p.size ? p.size : 1]);
          if (p.size) std::memcpy(p.bytes.get(), p.lent, p.size);
          p.lent = nullptr;
          p.loan.reset();
          return;
        }
    }
  }
  // The receiver has taken it and is reading it now.
  std::unique_lock<std::mutex> lock(loan->mu);
  loan->cv.wait(lock, [&] { return loan->returned.load(); });
}

void inproc_communicator::send(int peer, uint64_t tag, const void* data, size_t count, dtype type) {
  TROUPE_CHECK(peer >= 0 && peer < size(), "send to rank ", peer, " of ", size());
  inproc_payload p;
  p.size = count * dtype_size(type);
  p.bytes.reset(new uint8_t[p.size ? p.size : 1]);
  if (p.size) std::memcpy(p.bytes.get(), data, p.size);
  world_->put(rank_, peer, tag, std::move(p));
}

send_handle inproc_communicator::send_async(int peer, uint64_t tag, const void* data, size_t count, dtype type) {
  // Below this a copy costs less than the receiver's hand-back the sender waits for.
  constexpr size_t copy_below_bytes = 64 << 10;
  if (count * dtype_size(type) < copy_below_bytes) return communicator::send_async(peer, tag, data, count, type);
  TROUPE_CHECK(peer >= 0 && peer < size(), "send to rank ", peer, " of ", size());
  inproc_payload p;
  p.size = count * dtype_size(type);
  p.lent = static_cast<const uint8_t*>(data);
  p.loan = std::make_shared<inproc_loan>();
  auto loan = p.loan;
  world_->put(rank_, peer, tag, std::move(p));
  return send_handle([world = world_, loan, from = rank_, peer, spin = spin] { world->reclaim(from, peer, loan, spin); });
}

inproc_payload inproc_communicator::take_checked(int peer, uint64_t tag, size_t bytes) {
  TROUPE_CHECK(peer >= 0 && peer < size(), "recv from rank ", peer, " of ", size());
  inproc_payload p = world_->take(peer, rank_, tag, deadline, spin);
  if (p.size != bytes)
    throw transport_error("inproc: rank " + std::to_string(rank_) + " expected " + std::to_string(bytes) +
                          " bytes from rank " + std::to_string(peer) + ", got " + std::to_string(p.size));
  return p;
}

void inproc_communicator::recv(int peer, uint64_t tag, void* data, size_t count, dtype type) {
  size_t n = count * dtype_size(type);
  inproc_payload p = take_checked(peer, tag, n);
  if (n) std::memcpy(data, p.data(), n);
}

void inproc_communicator::recv_reduce_sum(int peer, uint64_t tag, float* data, size_t count) {
  inproc_payload p = take_checked(peer, tag, count * sizeof(float));
  // new[] storage, or the sender's f32 buffer: aligned for float
  const float* in = reinterpret_cast<const float*>(p.data());
  for (size_t i = 0; i < count; ++i) data[i] += in[i];
}

}  // namespace troupe
