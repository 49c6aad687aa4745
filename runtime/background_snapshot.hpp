#pragma once
// Phase 1 of a checkpoint off the step's critical path, pipelined the way CheckFreq does
// it (Mohan et al., FAST '21): after step t the copy of its state runs on this object's
// thread while step t+1 computes its gradients, which only read the parameters and the
// optimizer state. The owner calls settle() before anything changes that state again
// (the next update, a restore), so the copy is always of one step's state.
//
// On the step's path are only the hand-over (a lock and a wake-up) and, when the copy
// is slower than the next step's forward and backward, the rest of it in settle().
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace troupe {

class background_snapshot {
 public:
  background_snapshot();
  ~background_snapshot();  // settles, then stops the thread
  background_snapshot(const background_snapshot&) = delete;
  background_snapshot& operator=(const background_snapshot&) = delete;

  // Runs `copy` on the thread. Settles the previous copy first.
  void start(std::function<void()> copy);
  // Waits until the running copy (if any) has ended. Returns the milliseconds it waited;
  // rethrows what the copy threw (as std::runtime_error with its message).
  double settle();
  // The milliseconds the last settled copy took on the thread (-1 before the first).
  double last_copy_ms() const;

 private:
  void run();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool pending_ = false, stop_ = false;
  double copy_ms_ = -1;
  std::string error_;
  std::thread thread_;
};

}  // namespace troupe
