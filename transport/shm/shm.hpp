#pragma once
// shm: the processes of one host exchange tensors through shared memory; ranks on other
// hosts are reached over tcp. It is built over a tcp group of the same ranks, which admits
// every process (the secret's challenge-response), carries the setup, reaches the other
// hosts, and watches every peer (heartbeats; a killed process's sockets close at once): a
// shared-memory wait fails as soon as the tcp link to its peer is down or the group is
// aborted, so failure detection never depends on the shared memory noticing anything.
//
// Each process makes one segment (shm_open, mode 0600, a random name sent to its peers over
// the authenticated links, and unlinked as soon as they have mapped it: nothing is left in
// /dev/shm, even after a SIGKILL) holding one ring per sender of `slots` slots of
// `slot_bytes`. A message goes through its receiver's ring from that sender in pieces: the
// sender copies a piece into a free slot; the receiver copies (or, for a reducing receive,
// adds) it straight into the destination and frees the slot. The ring is small enough to
// stay in cache, so the middle copy runs cache to cache while both sides work at once, and a
// large message costs close to one pass over DRAM. Sends that do not fit at once are
// finished by whichever call of the process waits next (MPI's progress rule), so send_async
// never blocks; a waiting rank also drains messages nobody asked for yet into a mailbox, so
// two ranks that both send before they receive cannot deadlock. Every slot has a header
// (magic, length, tag, message length, piece offset) that the receiver checks; a bad one
// closes that link with a logged error. Payloads carry no checksum: this is memory two
// processes of one user share, not a wire. A wait polls for `spin`, then sleeps on a futex
// in its segment that the peers ring.
#include <memory>
#include <vector>

#include "transport/communicator.hpp"
#include "transport/rendezvous.hpp"
#include "transport/tcp/tcp.hpp"

namespace troupe {

struct shm_options {
  size_t slot_bytes = 32 << 10;  // a multiple of 64
  uint32_t slots = 16;
};

// Joins the group as `rank` of `size`: the tcp group first (make_tcp_communicator, with
// its errors), then shared memory with every peer on this host that can map this rank's
// segment and whose segment this rank can map. The others stay on tcp.
std::shared_ptr<communicator> make_shm_communicator(int rank, int size, rendezvous& store, const tcp_options& tcp,
                                                    const shm_options& shm = {});


// How many of `comm`'s peers it reaches through shared memory (0 for other transports).
int shm_peer_count(const communicator& comm);

}  // namespace troupe
