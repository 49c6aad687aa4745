#include "transport/communicator.hpp"

#include "runtime/check.hpp"
#include "transport/inproc/inproc.hpp"

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

std::vector<std::shared_ptr<communicator>> make_group(const std::string& transport, int size) {
  if (transport != "inproc") throw input_error("unknown transport '" + transport + "' (known: inproc)");
  if (size < 1) throw input_error("a communicator group needs at least 1 rank, got " + std::to_string(size));
  auto world = std::make_shared<inproc_world>(size);
  std::vector<std::shared_ptr<communicator>> group;
  for (int r = 0; r < size; ++r) group.push_back(std::make_shared<inproc_communicator>(world, r));
  return group;
}

}  // namespace troupe
