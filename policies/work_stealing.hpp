#pragma once
// Micro-batch work stealing between replicas (policy.steal_micro_batches, with the sync
// rule): each step's global batch is cut into M equal micro-batches; worker w of W starts
// the step owning the contiguous run [w M/W, (w+1) M/W) in a double-ended queue, takes its
// own from the front, and when its queue is empty asks all the others at once to give it
// from the back of theirs; it asks again after it has trained what it got, and its step
// is over when every answer is "none". A slow worker's unstarted micro-batches go to the fast
// ones inside the step, so the round ends when the work does, whatever the delay's cause
// (a constant slow-down, a random spike). Every micro-batch of the step is trained exactly
// once, by somebody (at most once in the step a worker fails), and each worker pushes the sample-weighted mean of its micro-batches'
// gradients: the sync rule's sample-weighted mean over the pushes is the whole batch's
// mean gradient, the single-process run's update.
//
// Membership: the workers of a step are the ones live when its version was made, as shard 0
// recorded them, so every worker of a step cuts the batch the same way. A worker that fails
// during step k (after its pull) takes its unstarted micro-batches of step k with it; the
// sync rule averages what the others push. Version k + 1 cannot be made before shard 0
// knows it has left, so from step k + 1 on the survivors own the whole batch again. (A
// crash between a worker's push of step k and its next pull can race the coordinator's
// leave to shard 0, so the dead worker may still be a member of step k + 1 and its run of
// k + 1 be lost too; never trained twice. Injected failures strike after the pull.)
//
// Cost: one request to shard 0 for the members per step, after the pulls; a round of
// asking is W - 1 requests and replies between workers of the process in parallel (one
// round trip, tens of microseconds); every round but a worker's last
// brings it at least one micro-batch, so a step sends at most (M + W)(W - 1) steal
// requests, and with steal-half far fewer (with no straggler, W (W - 1): one empty
// round each).
//
// The policy decides who starts with what, whom a thief asks in what order, and how much
// a victim gives; the worker actor (actors/ps_worker) keeps the queue and moves the
// messages.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

namespace troupe {

// The micro-batches worker `worker` of `workers` starts a step with: its contiguous run
// [worker M / workers, (worker + 1) M / workers) of [0, M), in order (integer division:
// runs of equal length when M is a multiple of workers, as at the start, and within one of
// each other after a failure). `worker` and `workers` count the step's members only.
std::deque<int64_t> own_micro_batches(int32_t worker, int32_t workers, int32_t micro_batches);

// The workers `thief` asks: every other one, the next up first (as ranks among the
// step's members).
std::vector<int32_t> victim_order(int32_t thief, int32_t workers);

// How many of a victim's `left` unstarted micro-batches it gives a thief, from the back
// of its queue: half, rounded up (a victim that asks is idle; one that is asked is
// usually busy with a micro-batch of its own, which is not in the queue).
size_t steal_count(size_t left);

// A victim's answer: takes steal_count(queue.size()) micro-batches off the back of
// `queue`, in queue order.
std::vector<int64_t> give_away(std::deque<int64_t>& queue);

}  // namespace troupe
