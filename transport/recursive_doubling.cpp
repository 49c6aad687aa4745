// Recursive-doubling all-reduce (sum), for the smallest buffers. With p = n a power of two:
// log2 p rounds; in the round of distance d (1, 2, .., p/2) rank r swaps its whole buffer
// with rank r xor d and adds the partner's copy. That is log2 p latency steps, half of
// halving-doubling's 2 log2 p, for n log2 p / 2 buffers on the wire instead of about 2n:
// the cheaper of the two while a buffer costs less to send than a step costs to take.
// Both partners of a round add the same two operands (in the two orders, and a + b == b + a
// in IEEE arithmetic), so every rank holds the same bits after every round. When n is not a
// power of two the extra ranks fold in and get the result back as in halving-doubling.
#include <vector>

#include "transport/collectives.hpp"
#include "transport/power_of_two_fold.hpp"

namespace troupe {

void recursive_doubling_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag) {
  if (comm.size() == 1 || count == 0) return;
  const power_of_two_fold f = fold_in(comm, data, count, tag);
  if (f.v < 0) return;  // sat out: holds the result
  std::vector<float> mine;
  for (int d = 1; d < f.p; d *= 2) {
    // The partner adds into its own buffer while reading this one's: send a copy.
    mine.assign(data, data + count);
    send_handle sent = comm.send_async(f.rank_of(f.v ^ d), tag + 1, mine.data(), count, dtype::f32);
    comm.recv_reduce_sum(f.rank_of(f.v ^ d), tag + 1, data, count);
    sent.wait();
  }
  unfold(comm, f, data, count, tag);
}

}  // namespace troupe
