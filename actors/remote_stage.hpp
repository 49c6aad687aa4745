#pragma once
// Stages in other processes. A job whose stages are split over processes (troupe launch,
// parallel.stages with more processes than replicas can take) joins the processes that hold
// the stages of the same replicas in a pipe group. remote_stage stands in, in this
// process's stage lists, for the stages that one process of that group holds: a pipe_msg
// sent to it goes out over the group's transport as a header (kind, replica, step,
// micro-batch, virtual stage, version, dtype, shape) and then the tensor's bytes, never
// through CAF's serializer. pipe_inlets runs one thread per other process of the group that
// receives them, checks the header, and hands each message to the local stage actor it is
// for, as if its neighbour were in this process. A link that fails while training (the
// peer died, hung, or the job was aborted) is reported once through on_error, so the
// coordinator fails the job instead of waiting for a stage that will never hear again.
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "actors/messages.hpp"
#include "transport/communicator.hpp"

namespace troupe {

// The pipe group's tag for pipe messages (the coordinator's collectives use tags from
// kPipeCollectiveTags up).
constexpr uint64_t kPipeTag = 1;
constexpr uint64_t kPipeCollectiveTags = 1024;

// Stands in for the stages of replica `replica` that process `process` of `pipe` holds.
// `link` serializes the sends of every remote_stage that talks to that process (a header
// and its bytes must not be split by another's). Spawn it detached: a send may wait for
// the transport.
caf::behavior remote_stage(caf::event_based_actor* self, std::shared_ptr<communicator> pipe, int process, int replica,
                           std::shared_ptr<std::mutex> link);

class pipe_inlets {
 public:
  // route(replica, stage): this process's actor for that stage of that replica (null if it
  // holds no such stage: the message is refused as a bad header).
  pipe_inlets(std::shared_ptr<communicator> pipe, std::function<caf::actor(int replica, int stage)> route, int stages,
              int replicas, std::function<void(const std::string&)> on_error);
  pipe_inlets(const pipe_inlets&) = delete;
  pipe_inlets& operator=(const pipe_inlets&) = delete;
  // Tells every other process of the group that this one sends nothing more, and waits
  // until each has said the same (after which no message is in flight); then the threads
  // end. The orderly end of a run.
  void close();
  // Without close(): aborts the group (the run failed) and joins the threads.
  ~pipe_inlets();

 private:
  void run(int peer);
  std::shared_ptr<communicator> pipe_;
  std::function<caf::actor(int, int)> route_;
  int stages_, replicas_;
  std::function<void(const std::string&)> on_error_;
  std::atomic<bool> closing_{false}, reported_{false};
  std::vector<std::thread> threads_;
};

}  // namespace troupe
