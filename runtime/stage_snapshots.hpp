#pragma once
// In-memory snapshots of pipeline stages' state at step boundaries: phase 1 of a
// checkpoint of a pipeline job, and where a stage's state comes from when its process is
// lost (actors/elastic_pipeline.hpp). Each (replica, stage) keeps its `depth` newest; a
// stage takes one on its compute thread right after its optimizer step, into the buffers
// of the oldest (no allocation once they exist). Thread-safe.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "runtime/checkpoint.hpp"
#include "runtime/stage_compute.hpp"

namespace troupe {

class stage_snapshots {
 public:
  // every: a snapshot after every `every` steps (0: never). depth >= 1.
  explicit stage_snapshots(int every, int depth = 2);
  int every() const { return every_; }
  bool due(int64_t steps_done) const { return every_ > 0 && steps_done > 0 && steps_done % every_ == 0; }
  // (replica, stage)'s state after `steps_done` steps (entries as save_state's, plus "step").
  void take(int replica, int stage, int64_t steps_done, const stage_compute& c);
  // Puts one in as it is (a state that came from elsewhere: a peer, a checkpoint).
  void put(int replica, int stage, int64_t steps_done, checkpoint_shard s);
  // A copy of the snapshot after `steps_done` into `out` (its tensors reused where they
  // fit); false when none is held.
  bool copy(int replica, int stage, int64_t steps_done, checkpoint_shard& out) const;
  // The same for a stage whichever replica took it (replicas hold the same state): the
  // steps held, oldest first, and a copy.
  std::vector<int64_t> steps_of_stage(int stage) const;
  bool copy_of_stage(int stage, int64_t steps_done, checkpoint_shard& out) const;
  // Forgets every snapshot after `steps_done` (a job that went back to it).
  void drop_after(int64_t steps_done);
  // The steps of the snapshots held for (replica, stage), oldest first.
  std::vector<int64_t> steps(int replica, int stage) const;
  // Time spent in take(), and how many, so far.
  double seconds() const;
  int64_t taken() const;

 private:
  struct held {
    mutable std::mutex mu;
    std::vector<std::pair<int64_t, checkpoint_shard>> slots;  // oldest first
  };
  held& entry(int replica, int stage) const;
  int every_, depth_;
  mutable std::mutex mu_;  // the map, and the counters
  mutable std::map<std::pair<int, int>, std::unique_ptr<held>> held_;
  double seconds_ = 0;
  int64_t taken_ = 0;
};

}  // namespace troupe
