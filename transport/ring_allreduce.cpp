// Ring all-reduce (sum). The buffer is cut into n chunks. Reduce-scatter: in step k
// (k = 0..n-2) rank r sends chunk (r-k) mod n to rank r+1 and adds the chunk
// (r-k-1) mod n it receives from rank r-1; after n-1 steps rank r holds the full sum of
// chunk (r+1) mod n. All-gather: n-1 more steps pass the finished chunks around the ring,
// each rank overwriting its copy. Every rank sends 2(n-1)/n of the buffer in total (the
// bandwidth optimum) in 2(n-1) latency steps; each chunk's sum is formed in one fixed
// order, so every rank ends with identical bits. The mean scales each finished chunk once,
// on its owner, before the all-gather: a pass over 1/n of the buffer, not all of it.
// Sends are send_async: the peer reads (inproc: straight from this rank's buffer, no copy)
// while this rank goes on. A chunk is never written after it is sent within a phase, so a
// send is waited for only where its chunk is next overwritten: the reduce-scatter's send
// of step k before the all-gather's receive of step k (the same chunk), the all-gather's
// sends before returning. A rank whose peer is late (more ranks than cores) is not held
// up step by step.
#include <vector>

#include "transport/collectives.hpp"

namespace troupe {

namespace {

void ring_allreduce(communicator& comm, float* data, size_t count, uint64_t tag, float scale) {
  const int n = comm.size(), r = comm.rank();
  if (n == 1 || count == 0) return;
  auto begin = [&](int c) { return count * size_t(c) / size_t(n); };
  auto len = [&](int c) { return begin(c + 1) - begin(c); };
  auto mod = [n](int x) { return ((x % n) + n) % n; };
  const int next = mod(r + 1), prev = mod(r - 1);
  std::vector<send_handle> scattered, gathered;
  for (int k = 0; k < n - 1; ++k) {
    int send_c = mod(r - k), recv_c = mod(r - k - 1);
    scattered.push_back(comm.send_async(next, tag, data + begin(send_c), len(send_c), dtype::f32));
    comm.recv_reduce_sum(prev, tag, data + begin(recv_c), len(recv_c));
  }
  if (scale != 1.0f) {
    float* own = data + begin(mod(r + 1));
    for (size_t i = 0, e = len(mod(r + 1)); i < e; ++i) own[i] *= scale;
  }
  for (int k = 0; k < n - 1; ++k) {
    int send_c = mod(r + 1 - k), recv_c = mod(r - k);
    gathered.push_back(comm.send_async(next, tag + 1, data + begin(send_c), len(send_c), dtype::f32));
    scattered[size_t(k)].wait();  // it sent chunk recv_c, about to be overwritten
    comm.recv(prev, tag + 1, data + begin(recv_c), len(recv_c), dtype::f32);
  }
  for (auto& g : gathered) g.wait();
}

}  // namespace

void ring_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag) {
  ring_allreduce(comm, data, count, tag, 1.0f);
}

void ring_allreduce_mean(communicator& comm, float* data, size_t count, uint64_t tag) {
  const float inv = 1.0f / float(comm.size());
  if (comm.size() == 1) return;
  ring_allreduce(comm, data, count, tag, inv);
}

}  // namespace troupe
