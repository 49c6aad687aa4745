#include "transport/communicator.hpp"

#include "runtime/check.hpp"
#include <unistd.h>

#include <atomic>
#include <thread>

#include "transport/inproc/inproc.hpp"
#include "transport/shm/shm.hpp"
#include "transport/tcp/tcp.hpp"
#include "transport/ucx/ucx.hpp"

namespace troupe {

send_handle& send_handle::operator=(send_handle&& o) noexcept {
  if (this != &o) {
    this->~send_handle();
    wait_ = std::move(o.wait_);
    o.wait_ = nullptr;
  }
  return *this;
}

send_handle::~send_handle() {
  try {
    wait();
  } catch (...) {  // the caller is unwinding from the failure that caused this one
  }
}

void send_handle::wait() {
  if (!wait_) return;
  std::function<void()> w = std::move(wait_);
  wait_ = nullptr;
  w();
}

send_handle communicator::send_async(int peer, uint64_t tag, const void* data, size_t count, dtype type) {
  send(peer, tag, data, count, type);
  return {};
}

void communicator::recv_reduce_sum(int peer, uint64_t tag, float* data, size_t count) {
  std::unique_ptr<float[]> incoming(new float[count ? count : 1]);  // uninitialised: recv writes it all
  recv(peer, tag, incoming.get(), count, dtype::f32);
  for (size_t i = 0; i < count; ++i) data[i] += incoming[i];
}

std::vector<std::shared_ptr<communicator>> join_concurrently(
    const std::vector<int>& ranks, const std::function<std::shared_ptr<communicator>(int rank)>& join) {
  std::vector<std::shared_ptr<communicator>> members(ranks.size());
  std::vector<std::exception_ptr> errors(ranks.size());
  std::vector<std::thread> joining;
  for (size_t k = 0; k < ranks.size(); ++k)
    joining.emplace_back([&, k] {
      try {
        members[k] = join(ranks[k]);
      } catch (...) {
        errors[k] = std::current_exception();
      }
    });
  for (auto& t : joining) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return members;
}

std::vector<std::shared_ptr<communicator>> make_group(const std::string& transport, int size) {
  if (transport != "inproc" && transport != "tcp" && transport != "shm" && transport != "ucx")
    throw input_error("unknown transport '" + transport + "' (known: inproc, tcp, shm, ucx)");
  if (size < 1) throw input_error("a communicator group needs at least 1 rank, got " + std::to_string(size));
  if (transport == "tcp" || transport == "shm" || transport == "ucx") {
    // Ranks as threads of this process, linked over loopback (and, for shm, through
    // shared memory segments as between processes).
    static std::atomic<uint64_t> groups{0};
    tcp_options options;
    options.group = (uint64_t(::getpid()) << 20) + groups.fetch_add(1);
    options.secret = make_job_secret();
    memory_rendezvous store;
    std::vector<int> ranks;
    for (int r = 0; r < size; ++r) ranks.push_back(r);
    if (transport == "shm") return join_shm_ranks(ranks, size, store, options);
    if (transport == "ucx") return join_ucx_ranks(ranks, size, store, options);
    return join_tcp_ranks(ranks, size, store, options);
  }
  auto world = std::make_shared<inproc_world>(size);
  std::vector<std::shared_ptr<communicator>> group;
  for (int r = 0; r < size; ++r) group.push_back(std::make_shared<inproc_communicator>(world, r));
  return group;
}

}  // namespace troupe
