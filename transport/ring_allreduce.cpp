// Ring all-reduce (sum). The buffer is cut into n chunks. Reduce-scatter: in step k
// (k = 0..n-2) rank r sends chunk (r-k) mod n to rank r+1 and adds the chunk
// (r-k-1) mod n it receives from rank r-1; after n-1 steps rank r holds the full sum of
// chunk (r+1) mod n. All-gather: n-1 more steps pass the finished chunks around the ring,
// each rank overwriting its copy. Every rank sends 2(n-1)/n of the buffer in total (the
// bandwidth optimum) in 2(n-1) latency steps; each chunk's sum is formed in one fixed
// order, so every rank ends with identical bits.
#include "transport/collectives.hpp"

namespace troupe {

void ring_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag) {
  const int n = comm.size(), r = comm.rank();
  if (n == 1 || count == 0) return;
  auto begin = [&](int c) { return count * size_t(c) / size_t(n); };
  auto len = [&](int c) { return begin(c + 1) - begin(c); };
  auto mod = [n](int x) { return ((x % n) + n) % n; };
  const int next = mod(r + 1), prev = mod(r - 1);
  for (int k = 0; k < n - 1; ++k) {
    int send_c = mod(r - k), recv_c = mod(r - k - 1);
    comm.send(next, tag, data + begin(send_c), len(send_c), dtype::f32);
    comm.recv_reduce_sum(prev, tag, data + begin(recv_c), len(recv_c));
  }
  for (int k = 0; k < n - 1; ++k) {
    int send_c = mod(r + 1 - k), recv_c = mod(r - k);
    comm.send(next, tag + 1, data + begin(send_c), len(send_c), dtype::f32);
    comm.recv(prev, tag + 1, data + begin(recv_c), len(recv_c), dtype::f32);
  }
}

}  // namespace troupe
