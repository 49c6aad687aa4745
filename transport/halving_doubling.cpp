// Halving-doubling all-reduce (sum), after Rabenseifner. With p = n a power of two:
// reduce-scatter by recursive halving, log2 p rounds: in the round of distance d (p/2,
// p/4, .., 1) rank r pairs with r xor d, sends the half of its current window the partner
// keeps and adds the partner's copy of the half it keeps; its window halves each round and
// ends as segment r (of p). All-gather by recursive doubling, the rounds in reverse: pairs
// swap their windows, which double. Each rank sends (p-1)/p of the buffer in each phase,
// 2(p-1)/p in all (as the ring), but in 2 log2 p latency steps instead of 2(p-1): the
// algorithm for small buffers. When n is not a power of two, with p the largest power of
// two below n and e = n - p, the first 2e ranks pair up first: each even one sends its whole
// buffer to the odd one above it (which adds it) and sits out; the p remaining ranks run the
// above; each odd one finally sends the result back (two more steps of the whole buffer).
// Each segment's sum is formed once, on its owner, and copied: every rank gets the same bits.
#include <algorithm>
#include <vector>

#include "transport/collectives.hpp"
#include "transport/power_of_two_fold.hpp"

namespace troupe {

void halving_doubling_allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag) {
  if (comm.size() == 1 || count == 0) return;
  const power_of_two_fold f = fold_in(comm, data, count, tag);
  if (f.v < 0) return;  // sat out: holds the result
  const int p = f.p, v = f.v;
  auto real = [&f](int w) { return f.rank_of(w); };
  auto at = [&](int segment) { return data + chunk_begin(count, p, segment); };
  auto elems = [&](int s0, int s1) { return chunk_begin(count, p, s1) - chunk_begin(count, p, s0); };
  std::vector<send_handle> sent;
  int lo = 0, len = p;  // window: segments [lo, lo + len)
  for (int d = p / 2; d >= 1; d /= 2) {
    const int partner = v ^ d;
    const bool keep_lower = (v & d) == 0;
    const int keep = keep_lower ? lo : lo + d, give = keep_lower ? lo + d : lo;
    sent.push_back(comm.send_async(real(partner), tag + 1, at(give), elems(give, give + d), dtype::f32));
    comm.recv_reduce_sum(real(partner), tag + 1, at(keep), elems(keep, keep + d));
    lo = keep, len = d;
  }
  for (auto& s : sent) s.wait();  // the all-gather overwrites what was given away
  sent.clear();
  for (int d = 1; d < p; d *= 2) {
    const int partner = v ^ d;
    const int other = (v & d) == 0 ? lo + len : lo - len;  // the partner's window, beside ours
    sent.push_back(comm.send_async(real(partner), tag + 2, at(lo), elems(lo, lo + len), dtype::f32));
    comm.recv(real(partner), tag + 2, at(other), elems(other, other + len), dtype::f32);
    lo = std::min(lo, other), len *= 2;
  }
  for (auto& s : sent) s.wait();
  unfold(comm, f, data, count, tag);
}

void allreduce_sum(communicator& comm, float* data, size_t count, uint64_t tag) {
  if (count * sizeof(float) <= kRecursiveDoublingMaxBytes)
    recursive_doubling_allreduce_sum(comm, data, count, tag);
  else if (count * sizeof(float) <= kHalvingDoublingMaxBytes)
    halving_doubling_allreduce_sum(comm, data, count, tag);
  else
    ring_allreduce_sum(comm, data, count, tag);
}

}  // namespace troupe
