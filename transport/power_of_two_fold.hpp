#pragma once
// For all-reduces that need a power-of-two group (halving-doubling, recursive doubling):
// with p the largest power of two <= n and e = n - p, the first 2e ranks pair up; the even
// rank of each pair sends its whole buffer to the odd one (which adds it) and sits out
// until unfold hands it the result: two more steps of the whole buffer. Uses tags tag
// (fold) and tag + 3 (unfold) of the collective's kTagsPerCollective.
#include "transport/communicator.hpp"

namespace troupe {

struct power_of_two_fold {
  int p = 1, extra = 0;
  int v = -1;  // this rank's place among the p that take part; -1: it sat out, and holds the result
  // Back from a place among the p to a rank.
  int rank_of(int w) const { return w < extra ? 2 * w + 1 : w + extra; }
};

// Folds in; for a rank that sits out, returns only once unfold has sent it the result.
inline power_of_two_fold fold_in(communicator& comm, float* data, size_t count, uint64_t tag) {
  const int n = comm.size(), r = comm.rank();
  power_of_two_fold f;
  while (f.p * 2 <= n) f.p *= 2;
  f.extra = n - f.p;
  if (r < 2 * f.extra) {
    if (r % 2 == 0) {
      comm.send(r + 1, tag, data, count, dtype::f32);
      comm.recv(r + 1, tag + 3, data, count, dtype::f32);
      return f;
    }
    comm.recv_reduce_sum(r - 1, tag, data, count);
  }
  f.v = r < 2 * f.extra ? r / 2 : r - f.extra;
  return f;
}

// Hands the result back to the rank that sat out beside this one, if any.
inline void unfold(communicator& comm, const power_of_two_fold& f, const float* data, size_t count, uint64_t tag) {
  const int r = comm.rank();
  if (f.v >= 0 && r < 2 * f.extra) comm.send(r - 1, tag + 3, data, count, dtype::f32);
}

}  // namespace troupe
