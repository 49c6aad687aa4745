#include "transport/communicator.hpp"

#include "runtime/check.hpp"
#include <unistd.h>

#include <atomic>
#include <thread>

#include "transport/inproc/inproc.hpp"
#include "transport/shm/shm.hpp"
#include "transport/tcp/tcp.hpp"
#include "transport/transports.hpp"
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

bool is_process_transport(const std::string& transport) {
  return transport == "tcp" || transport == "shm" || transport == "ucx";
}

namespace {

void check_process_transport(const std::string& transport) {
  if (transport == "nccl")
    throw input_error("transport 'nccl' moves device memory: it is an nccl_group (transport/nccl/nccl.hpp), not a "
                      "communicator of host memory (known for processes: tcp, shm, ucx)");
  if (!is_process_transport(transport))
    throw input_error("unknown transport '" + transport + "' for processes (known: tcp, shm, ucx)");
}

}  // namespace

std::shared_ptr<communicator> join_group(const std::string& transport, int rank, int size, rendezvous& store,
                                         const tcp_options& options) {
  check_process_transport(transport);
  if (transport == "shm") return make_shm_communicator(rank, size, store, options);
  if (transport == "ucx") return make_ucx_communicator(rank, size, store, options);
  return make_tcp_communicator(rank, size, store, options);
}

std::vector<std::shared_ptr<communicator>> join_group_ranks(const std::string& transport, const std::vector<int>& ranks,
                                                            int size, rendezvous& store, const tcp_options& options) {
  check_process_transport(transport);
  std::vector<std::shared_ptr<communicator>> members(ranks.size());
  std::vector<std::exception_ptr> errors(ranks.size());
  std::vector<std::thread> joining;
  for (size_t k = 0; k < ranks.size(); ++k)
    joining.emplace_back([&, k] {
      try {
        members[k] = join_group(transport, ranks[k], size, store, options);
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
  if (transport == "nccl")
    throw input_error("transport 'nccl' moves device memory: it is an nccl_group (transport/nccl/nccl.hpp), made by "
                      "make_nccl_threads; host-memory transports: inproc, tcp, shm, ucx");
  if (transport != "inproc" && transport != "tcp" && transport != "shm" && transport != "ucx")
    throw input_error("unknown transport '" + transport + "' (known: inproc, tcp, shm, ucx)");
  if (size < 1) throw input_error("a communicator group needs at least 1 rank, got " + std::to_string(size));
  if (is_process_transport(transport)) {
    // Ranks as threads of this process, linked over loopback (and, for shm, through
    // shared memory segments as between processes).
    static std::atomic<uint64_t> groups{0};
    tcp_options options;
    options.group = (uint64_t(::getpid()) << 20) + groups.fetch_add(1);
    options.secret = make_job_secret();
    memory_rendezvous store;
    std::vector<int> ranks;
    for (int r = 0; r < size; ++r) ranks.push_back(r);
    return join_group_ranks(transport, ranks, size, store, options);
  }
  auto world = std::make_shared<inproc_world>(size);
  std::vector<std::shared_ptr<communicator>> group;
  for (int r = 0; r < size; ++r) group.push_back(std::make_shared<inproc_communicator>(world, r));
  return group;
}

}  // namespace troupe
