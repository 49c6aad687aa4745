// Recursive-doubling all-reduce (sum), for the smallest buffers. With p = n a power of two:
// log2 p rounds; in the round of distance d (1, 2, .., p/2) rank r swaps its whole buffer
// with rank r xor d and adds the partner's copy. That is log2 p latency steps, half of
// halving-doubling's 2 log2 p, for n log2 p / 2 buffers on the wire instead of about 2n:
// the cheaper of the two while a buffer costs less to send than a step costs to take.
// Both partners of a round add the same two operands (in the two orders, and a + b == b + a
// in IEEE arithmetic), so every rank holds the same bits after every round. When n is not a
// power of two the extra ranks fold in and get the result back as in halving-doubling.
#include "transport/collectives.hpp"

namespace troupe {

void recursive_doubling_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag) {
  const int n = comm.size(), r = comm.rank();
  if (n == 1 || count == 0) return;
  int p = 1;
  while (p * 2 <= n) p *= 2;
  const int extra = n - p;
  if (r < 2 * extra) {  // fold: the even rank of each of the first `extra` pairs sits out
    if (r % 2 == 0) {
      comm.send(r + 1, tag, data, count, dtype::f32);
      comm.recv(r + 1, tag + 3, data, count, dtype::f32);
      return;
    }
    comm.recv_reduce_sum(r - 1, tag, data, count);
  }
  const int v = r < 2 * extra ? r / 2 : r - extra;
  auto real = [extra](int w) { return w < extra ? 2 * w + 1 : w + extra; };
  std::vector<float> mine;
  for (int d = 1; d < p; d *= 2) {
    // The partner adds into its own buffer while reading this one's: send a copy.
    mine.assign(data, data + count);
    send_handle sent = comm.send_async(real(v ^ d), tag + 1, mine.data(), count, dtype::f32);
    comm.recv_reduce_sum(real(v ^ d), tag + 1, data, count);
    sent.wait();
  }
  if (r < 2 * extra) comm.send(r - 1, tag + 3, data, count, dtype::f32);  // unfold
}

}  // namespace troupe
