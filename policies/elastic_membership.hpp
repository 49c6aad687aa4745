#pragma once
// Who trains in an elastic data-parallel job (elastic.mode "respawn"), and on which rows
// of each step's global batch. A view is one generation of the membership: its members'
// ids (the ids the coordinator gave them at admission) in rank order. The coordinator
// decides views (a member lost: the next view is without it; a newcomer ready: with it);
// the workers only follow them. This file decides nothing about messages.
#include <cstdint>
#include <string>
#include <vector>

namespace troupe {

struct elastic_view {
  int64_t generation = 0;
  std::vector<int32_t> members;

  int index_of(int32_t id) const;  // its rank in this view; -1 if it is not a member
  std::string encode() const;      // "generation id id ..."
  // input_error naming what was wrong for text that encode() did not write.
  static elastic_view decode(const std::string& text);
};

// The next generation without `lost` (unchanged members keep their order), or with
// `joined` appended.
elastic_view view_without(const elastic_view& v, int32_t lost);
elastic_view view_with(const elastic_view& v, int32_t joined);
// Fixed places (a pipeline: each rank holds its stages): `joined` takes `lost`'s rank.
// input_error when `lost` is not a member or `joined` is one already.
elastic_view view_replacing(const elastic_view& v, int32_t lost, int32_t joined);

// The rows [begin, end) of a step's `batch` examples that rank k of n trains, and how
// many examples the whole step trains (the gradients' divisor). keep: the global batch is
// split over the n live workers (uneven by at most one row); otherwise each rank trains
// batch / launched rows, and the step shrinks with the workers.
struct row_share {
  int64_t begin = 0, end = 0, total = 0;
};
row_share rows_for(int k, int n, int64_t batch, int launched, bool keep);

// Whether a view of `live` members may go on training: at least min_workers.
bool view_viable(const elastic_view& v, uint32_t min_workers);

}  // namespace troupe
