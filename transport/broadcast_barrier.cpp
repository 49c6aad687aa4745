// Broadcast: a binomial tree rooted at `root`. With ranks renumbered v = (r - root) mod n,
// rank v receives from v - m (m its lowest set bit) and then sends to v + m' for every
// power of two m' below m (all of them at the root) that stays below n. ceil(log2 n)
// latency steps, each carrying the whole buffer: log2 n x (alpha + N beta) on the critical
// path, the right shape for the small buffers (parameters of a joining rank, flags) it is
// used for.
//
// Barrier: dissemination. In round k (k = 0..ceil(log2 n)-1) rank r sends an empty message
// to rank r + 2^k and waits for one from rank r - 2^k. After the last round every rank has
// heard, directly or through others, from every rank: ceil(log2 n) latency steps, no data.
#include <vector>

#include "transport/collectives.hpp"

namespace troupe {

void broadcast(communicator& comm, void* data, size_t count, dtype type, int root, uint64_t tag) {
  const int n = comm.size(), r = comm.rank();
  if (root < 0 || root >= n)
    throw transport_error("broadcast: root " + std::to_string(root) + " is not a rank of a group of " +
                          std::to_string(n));
  if (n == 1) return;
  const int v = ((r - root) % n + n) % n;
  auto real = [&](int w) { return (w + root) % n; };
  int mask = 1;
  while (mask < n) {
    if (v & mask) {
      comm.recv(real(v - mask), tag, data, count, type);
      break;
    }
    mask <<= 1;
  }
  std::vector<send_handle> sent;
  for (mask >>= 1; mask > 0; mask >>= 1)
    if (v + mask < n) sent.push_back(comm.send_async(real(v + mask), tag, data, count, type));
  for (auto& s : sent) s.wait();
}

void barrier(communicator& comm, uint64_t tag) {
  const int n = comm.size(), r = comm.rank();
  for (int step = 1; step < n; step *= 2) {
    comm.send((r + step) % n, tag, nullptr, 0, dtype::f32);
    comm.recv(((r - step) % n + n) % n, tag, nullptr, 0, dtype::f32);
  }
}

}  // namespace troupe
