#include "transport/communicator.hpp"

#include "runtime/check.hpp"
#include "transport/inproc/inproc.hpp"

namespace troupe {

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
