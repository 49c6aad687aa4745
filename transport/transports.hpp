#pragma once
// Joining a group of processes over a transport chosen by name: "tcp" (transport/tcp/),
// "shm" (transport/shm/: shared memory on one host, tcp to others) or "ucx"
// (transport/ucx/). What troupe train, troupe selftest and troupe bench allreduce call;
// make_group (communicator.hpp) uses the same for ranks as threads.
#include <memory>
#include <string>
#include <vector>

#include "transport/communicator.hpp"
#include "transport/rendezvous.hpp"
#include "transport/tcp/tcp.hpp"

namespace troupe {

// True for the names join_group takes.
bool is_process_transport(const std::string& transport);

// This process's member `rank` of a group of `size` over `transport`; input_error for
// another name: "unknown transport 'X' for processes (known: tcp, shm, ucx)".
std::shared_ptr<communicator> join_group(const std::string& transport, int rank, int size, rendezvous& store,
                                         const tcp_options& options);

// Several ranks of one group joined from this process at once, each on its own thread (a
// rank's join returns only once all its links are up, so one at a time would wait for
// itself): the members in the order of `ranks`, or the first error any join threw.
std::vector<std::shared_ptr<communicator>> join_group_ranks(const std::string& transport, const std::vector<int>& ranks,
                                                            int size, rendezvous& store, const tcp_options& options);

}  // namespace troupe
