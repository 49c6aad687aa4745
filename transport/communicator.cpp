#include "transport/communicator.hpp"

#include "runtime/check.hpp"
#include "transport/inproc/inproc.hpp"

namespace troupe {

std::vector<std::shared_ptr<communicator>> make_group(const std::string& transport, int size) {
  if (transport != "inproc") throw input_error("unknown transport '" + transport + "' (known: inproc)");
  if (size < 1) throw input_error("a communicator group needs at least 1 rank, got " + std::to_string(size));
  auto world = std::make_shared<inproc_world>(size);
  std::vector<std::shared_ptr<communicator>> group;
  for (int r = 0; r < size; ++r) group.push_back(std::make_shared<inproc_communicator>(world, r));
  return group;
}

}  // namespace troupe
