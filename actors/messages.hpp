#pragma once
// Every message type that actors exchange, their atoms, and their registration with
// CAF. Tensors travel by reference inside a process (a troupe::tensor is a handle on
// shared storage, so copying a message copies handles, never data); across processes
// the inspect functions below serialize the bytes with one apply_raw call
// (shared/STACK.md §2.3: element-wise serialization runs at ~140 MB/s).
#include <caf/all.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "runtime/checkpoint.hpp"
#include "runtime/tensor.hpp"

namespace troupe {

using start_atom = caf::atom_constant<caf::atom("start")>;
using credit_atom = caf::atom_constant<caf::atom("credit")>;
using eval_atom = caf::atom_constant<caf::atom("eval")>;
using generate_atom = caf::atom_constant<caf::atom("generate")>;
using run_atom = caf::atom_constant<caf::atom("run")>;
using peers_atom = caf::atom_constant<caf::atom("peers")>;
using step_atom = caf::atom_constant<caf::atom("step")>;
using grads_atom = caf::atom_constant<caf::atom("grads")>;
using apply_atom = caf::atom_constant<caf::atom("apply")>;
using names_atom = caf::atom_constant<caf::atom("names")>;
using params_atom = caf::atom_constant<caf::atom("params")>;
// Parameter shards (actors/param_shard.hpp) and their workers (actors/ps_worker.hpp).
using pull_atom = caf::atom_constant<caf::atom("pull")>;
using push_atom = caf::atom_constant<caf::atom("push")>;
using leave_atom = caf::atom_constant<caf::atom("leave")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using computed_atom = caf::atom_constant<caf::atom("computed")>;
using speed_atom = caf::atom_constant<caf::atom("speed")>;
using shares_atom = caf::atom_constant<caf::atom("shares")>;
using steal_atom = caf::atom_constant<caf::atom("steal")>;
using members_atom = caf::atom_constant<caf::atom("members")>;
using drain_atom = caf::atom_constant<caf::atom("drain")>;
using ckpt_atom = caf::atom_constant<caf::atom("ckpt")>;  // a shard's checkpoint copy
// A shard's standby copy in another process (elastic.mode "respawn"): each update it
// replays, its promotion when the shard's process is lost, the workers' second push.
using replica_atom = caf::atom_constant<caf::atom("replica")>;
using promote_atom = caf::atom_constant<caf::atom("promote")>;
using repush_atom = caf::atom_constant<caf::atom("repush")>;
using moved_atom = caf::atom_constant<caf::atom("moved")>;
// Between the launcher's cluster_coordinator and the node agents (one per process).
using join_atom = caf::atom_constant<caf::atom("join")>;
using prove_atom = caf::atom_constant<caf::atom("prove")>;
using assign_atom = caf::atom_constant<caf::atom("assign")>;
using done_atom = caf::atom_constant<caf::atom("done")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using lost_atom = caf::atom_constant<caf::atom("lost")>;  // coordinator -> launcher: kill, respawn
using poll_atom = caf::atom_constant<caf::atom("poll")>;  // coordinator -> itself: replacements ready?

// One (micro-)batch of training data, or the whole evaluation set (step = -1).
struct tensor_batch {
  int64_t step = 0;
  int32_t micro = 0;     // micro-batch index within the step
  int64_t version = 0;   // parameter version the batch is meant for
  tensor x;              // inputs: (B,784) f32 images or (B,T) i32 tokens
  tensor y;              // targets: (B) or (B,T) i32
};

// What a device reports after one optimizer step.
struct step_report {
  int64_t step = 0;
  float loss = 0;
  float grad_norm = 0;
  float lr = 0;
  int64_t samples = 0;
  int64_t tokens = 0;     // samples * context for GPT, 0 for the MLP
  double compute_s = 0;   // forward + backward + optimizer on the device
};

struct eval_report {
  double loss = 0;
  double accuracy = -1;   // classification only; -1 where it does not apply
  int64_t count = 0;      // samples evaluated
};

// The examples of one micro-batch, from the data feeder to a stage that reads data (the
// first virtual stage for inputs, the last for targets): which examples (i32 indices),
// not their bytes; the stage's device gathers the rows.
struct data_msg {
  int64_t step = 0;
  int32_t micro = 0;
  int64_t version = 0;  // parameter version the data is meant for (the step, while synchronous)
  tensor examples;
};

// An activation (forward) or a gradient (backward) on its way to a virtual stage.
struct pipe_msg {
  enum kind_t : uint8_t { activation = 0, gradient = 1 };
  uint8_t kind = activation;
  int64_t step = 0;
  int32_t micro = 0;
  int32_t vstage = 0;   // the receiving virtual stage (chunk * stages + stage)
  int64_t version = 0;  // parameter version the sender computed with (synchronous: the step)
  tensor t;
};

// What a stage reports when it has run its whole order for a step. Times are seconds
// on the process's steady clock, so stages of one process can be lined up.
struct stage_report {
  int32_t stage = 0;
  int32_t replica = 0;
  int64_t step = 0;
  int32_t ops = 0;
  int32_t peak_stash = 0;  // most chunk activations held at once
  double busy_s = 0;       // time spent computing
  double start_s = 0;      // when the stage began the step
  double end_s = 0;        // when its last op finished
  double loss_sum = 0;     // sum of micro-batch losses (last stage only)
  double grad_norm = -1;   // set when the stage took its optimizer step itself
  double peak_stash_bytes = 0;  // measured: most activation bytes held for backward
  std::string error;       // non-empty: the stage failed; what failed, and why
};

// What a parameter-shard worker reports after each gradient it pushed.
struct worker_report {
  int32_t worker = 0;
  int64_t step = 0;        // its clock: the step whose slice of the batch it trained on
  float loss = 0;          // mean loss over its slice
  int64_t samples = 0;
  int64_t version = 0;     // shard 0's version its parameters came from
  double compute_s = 0;    // real forward + backward
  double emulated_s = 0;   // the whole step as emulated (policy.sample_ms), 0 when off
  double pull_wait_s = 0;  // from asking for parameters to having all of them
  int64_t bytes = 0;       // parameters pulled plus gradients pushed, this step
  int32_t stolen = 0;      // policy.steal_micro_batches: micro-batches it took from others
  int32_t given = 0;       // ... and that others took from it
};

// What a parameter shard counts, for the metrics and the experiment tables.
struct shard_stats {
  int32_t shard = 0;
  int64_t version = 0;       // updates applied
  int64_t pushes = 0;        // gradients received
  int64_t applied = 0;       // gradients that went into an update
  int64_t dropped = 0;       // gradients discarded (backup workers: the late ones)
  std::vector<int64_t> staleness;  // staleness[t]: applied gradients of staleness t (last bin: >= its index)
  int64_t bytes_in = 0, bytes_out = 0;
  double apply_s = 0;        // time spent combining gradients and stepping the optimizer
  std::vector<int64_t> shares;  // policy.balance_every, shard 0: the last shares of the batch it handed out
};

// Work a stage hands to the device actor that owns the compute thread it runs on. It
// stays inside its process (it carries code, not data): serializing one is an error.
struct device_task {
  std::shared_ptr<std::function<void()>> work;
};

// Phase 1 of a checkpoint: the device's copy of its state after `step` steps, for the
// coordinator's background writer. In-process only (the shard is shared, never copied).
struct checkpoint_msg {
  int64_t step = 0;
  std::shared_ptr<const checkpoint_shard> shard;
};

// A checkpoint shard crosses processes whole (a parameter shard's copy on its way to
// process 0's writer).
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, checkpoint_shard& x) {
  return f(caf::meta::type_name("checkpoint_shard"), x.tensors, x.texts);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, checkpoint_msg& x) {
  if constexpr (std::is_base_of<caf::serializer, Inspector>::value ||
                std::is_base_of<caf::deserializer, Inspector>::value) {
    return caf::make_error(caf::sec::invalid_argument, "checkpoint_msg: a shard in this process, not serializable");
  } else {
    return f(caf::meta::type_name("checkpoint_msg"), x.step);
  }
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, device_task&) {
  if constexpr (std::is_base_of<caf::serializer, Inspector>::value ||
                std::is_base_of<caf::deserializer, Inspector>::value) {
    return caf::make_error(caf::sec::invalid_argument, "device_task: work for a device in this process, not serializable");
  } else {
    return f(caf::meta::type_name("device_task"));
  }
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor& x) {
  if constexpr (std::is_base_of<caf::serializer, Inspector>::value) {
    uint8_t type = uint8_t(x.type());
    shape_t shape = x.shape();
    uint8_t defined = x.defined();
    if (auto err = f(caf::meta::type_name("tensor"), defined, type, shape)) return err;
    return defined && x.bytes() ? f.apply_raw(x.bytes(), x.raw()) : caf::error{};
  } else if constexpr (std::is_base_of<caf::deserializer, Inspector>::value) {
    uint8_t type = 0, defined = 0;
    shape_t shape;
    if (auto err = f(caf::meta::type_name("tensor"), defined, type, shape)) return err;
    if (!defined) {
      x = tensor{};
      return caf::error{};
    }
    if (type > uint8_t(dtype::u8)) return caf::make_error(caf::sec::invalid_argument, "tensor: unknown dtype");
    // A frame from outside: refuse shapes that are negative or whose size overflows
    // (at most 2^40 elements, 4 TiB of f32) instead of aborting in the allocator.
    unsigned __int128 n = 1;
    for (int64_t d : shape) {
      if (d < 0) return caf::make_error(caf::sec::invalid_argument, "tensor: negative dimension");
      n *= uint64_t(d);
      if (n > (unsigned __int128)1 << 40)
        return caf::make_error(caf::sec::invalid_argument, "tensor: more than 2^40 elements");
    }
    if constexpr (std::is_same<Inspector, caf::binary_deserializer>::value) {
      // More bytes than the message holds: refused before they are allocated.
      if (n * dtype_size(dtype(type)) > f.remaining())
        return caf::make_error(caf::sec::invalid_argument, "tensor: larger than the message that carries it");
    }
    x = tensor::empty(shape, dtype(type));
    return x.bytes() ? f.apply_raw(x.bytes(), x.raw()) : caf::error{};
  } else {  // to_string: shape and dtype only
    std::string desc = x.defined() ? std::string(dtype_name(x.type())) + shape_str(x.shape()) : "undefined";
    return f(caf::meta::type_name("tensor"), desc);
  }
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_batch& x) {
  return f(caf::meta::type_name("tensor_batch"), x.step, x.micro, x.version, x.x, x.y);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_report& x) {
  return f(caf::meta::type_name("step_report"), x.step, x.loss, x.grad_norm, x.lr, x.samples, x.tokens,
           x.compute_s);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, eval_report& x) {
  return f(caf::meta::type_name("eval_report"), x.loss, x.accuracy, x.count);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, data_msg& x) {
  return f(caf::meta::type_name("data_msg"), x.step, x.micro, x.version, x.examples);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, pipe_msg& x) {
  return f(caf::meta::type_name("pipe_msg"), x.kind, x.step, x.micro, x.vstage, x.version, x.t);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, stage_report& x) {
  return f(caf::meta::type_name("stage_report"), x.stage, x.replica, x.step, x.ops, x.peak_stash, x.busy_s, x.start_s, x.end_s,
           x.loss_sum, x.grad_norm, x.peak_stash_bytes, x.error);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_report& x) {
  return f(caf::meta::type_name("worker_report"), x.worker, x.step, x.loss, x.samples, x.version, x.compute_s,
           x.emulated_s, x.pull_wait_s, x.bytes, x.stolen, x.given);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, shard_stats& x) {
  return f(caf::meta::type_name("shard_stats"), x.shard, x.version, x.pushes, x.applied, x.dropped, x.staleness,
           x.bytes_in, x.bytes_out, x.apply_s, x.shares);
}

// A node agent asking to join a job: where it runs, and the nonce the coordinator must
// answer to prove it knows the job's secret (node_challenge).
struct node_hello {
  std::string host;    // the address this process listens on for its data links
  int32_t pid = 0;
  int32_t cores = 0;
  int32_t slot = -1;   // started by troupe launch as its local process `slot`; -1: a node from elsewhere
  std::string nonce;   // 16 random bytes, hex
};

// The coordinator's answer to a hello: its proof of the secret for the agent's nonce, and
// a nonce of its own for the agent to prove the secret in turn (prove_atom).
struct node_challenge {
  std::string nonce;
  std::string proof;
};

// What a node agent is asked to run: process `rank` of `world` of the job.
struct rank_assignment {
  int32_t rank = 0;
  int32_t world = 1;
  std::string spec;                // the job spec's JSON text
  std::string path;                // where it was read from, on the launcher's host
  std::vector<std::string> flags;  // troupe train flags (--steps, --threads, --quiet)
  std::string rendezvous;          // a directory, or tcp://HOST:PORT served by the launcher
  uint64_t group = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_hello& x) {
  return f(caf::meta::type_name("node_hello"), x.host, x.pid, x.cores, x.slot, x.nonce);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, node_challenge& x) {
  return f(caf::meta::type_name("node_challenge"), x.nonce, x.proof);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rank_assignment& x) {
  return f(caf::meta::type_name("rank_assignment"), x.rank, x.world, x.spec, x.path, x.flags, x.rendezvous, x.group);
}

void register_message_types(caf::actor_system_config& cfg);

}  // namespace troupe
