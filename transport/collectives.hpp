#pragma once
// Collectives written once over a communicator's point-to-point sends.
#include "transport/communicator.hpp"

namespace troupe {

// In-place sum all-reduce of `count` f32 elements over every rank of `comm` (ring).
// `tag` keeps concurrent collectives apart. Every rank ends with the same bits.
void ring_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag);
// The same, then times 1/size: every rank ends with the same bits, equal to the sum's
// times 1/size.
void ring_allreduce_mean(communicator& comm, float* data, size_t count, uint64_t tag);

}  // namespace troupe
