#pragma once
// ucx: ranks reach each other through UCX's UCP tag-matching API (UCX 1.13, Debian's
// build: shared memory (sysv/posix) between the processes of one host, TCP between hosts;
// RDMA where the machine has it and UCX_TLS names it). CMA is left out unless UCX_TLS says
// otherwise: without UCX's peer error handling, a CMA read from a dead peer aborts the
// reading process inside UCX. Like shm, it is built over a tcp group of the same
// ranks, which admits every process (the secret's challenge-response), carries the UCP
// worker addresses, and watches every peer: UCX endpoints run without UCX's own error
// handling (its peer mode would turn the shared-memory transports off, shared/STACK.md §3),
// so a wait fails when the tcp link to its peer is down or the group is aborted. A
// message's UCX tag is (sender rank << 48 | tag); tags must be below 2^48. Waits poll the
// worker for `spin`, then yield and sleep in short steps between polls.
#include <memory>
#include <vector>

#include "transport/communicator.hpp"
#include "transport/rendezvous.hpp"
#include "transport/tcp/tcp.hpp"

namespace troupe {

std::shared_ptr<communicator> make_ucx_communicator(int rank, int size, rendezvous& store, const tcp_options& tcp);


}  // namespace troupe
