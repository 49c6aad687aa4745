#include "actors/stage.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "runtime/optimizer.hpp"  // clip_coefficient
#include "runtime/threads.hpp"
#include "transport/collectives.hpp"

namespace troupe {

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

bool has_replicas(const stage_state& s) { return s.cfg.replica_group && s.cfg.replica_group->size() > 1; }

// Before a step's passes: gradients will be averaged over the replicas in buckets, each
// started as the compute reports it final (one group per stage: the same stage of every
// replica).
void start_averaging(stage_state& s) {
  if (!has_replicas(s)) return;
  if (!s.buckets) {
    tensor g = s.cfg.compute->flat_grads();
    bucketed_allreduce::span_fn on_span;
    if (s.cfg.trace)
      on_span = [trace = s.cfg.trace, track = s.cfg.comm_track, step = &s.step](int bucket, size_t elems, double t0,
                                                                                  double t1) {
        trace->record({track, "AR" + std::to_string(bucket) + " " + std::to_string(elems * 4 / 1024) + "K",
                       "allreduce", *step, t0, t1});
      };
    s.buckets = std::make_unique<bucketed_allreduce>(s.cfg.replica_group, g.f32(), size_t(g.numel()),
                                                     s.cfg.bucket_elems ? s.cfg.bucket_elems : size_t(g.numel()),
                                                     std::move(on_span));
    if (s.cfg.bucket_elems) {
      bucketed_allreduce* b = s.buckets.get();
      s.cfg.compute->on_grads_ready([b](size_t begin, size_t end) { b->ready(begin, end); });
    }
  }
  s.buckets->begin_step(uint64_t(s.step) << 32);
}

// After the passes: waits until every bucket is averaged (the wait shows on the stage's
// track; the all-reduces themselves on its communication track).
void average_over_replicas(stage_state& s) {
  if (!has_replicas(s)) return;
  double t0 = now_s();
  s.buckets->finish();
  if (s.cfg.trace) s.cfg.trace->record({s.cfg.track, "sync", "allreduce", s.step, t0, now_s()});
}

// The whole model is here: average, clip and step without asking anyone.
void finish_step_alone(caf::stateful_actor<stage_state>* self) {
  auto& s = self->state;
  try {
    average_over_replicas(s);
  } catch (const std::exception& e) {
    s.report.error = "stage " + std::to_string(s.cfg.stage) + " of replica " + std::to_string(s.cfg.replica) +
                     ", step " + std::to_string(s.step) + ": " + e.what();
    return;
  }
  double norm = std::sqrt(s.cfg.compute->grad_sum_squares({}));
  float scale = clip_coefficient(norm, s.cfg.max_norm);
  double t0 = now_s();
  s.cfg.compute->apply_update({}, {}, scale, s.cfg.lr_at(s.step));
  if (s.cfg.trace) s.cfg.trace->record({s.cfg.track, "opt", "optimizer", s.step, t0, now_s()});
  s.report.grad_norm = norm;
}

const char* pass_name(pass_kind k) {
  return k == pass_kind::forward ? "forward" : k == pass_kind::backward ? "backward" : "weight-gradient";
}

// Runs ops of the current step's order while their inputs are at hand.
void advance(caf::stateful_actor<stage_state>* self) {
  auto& s = self->state;
  const int p = s.cfg.stages, V = p * s.chunks, m = s.cfg.micro_batches;
  const bool split = s.cfg.schedule->splits_backward();
  while (s.next < s.order.size()) {
    const pipeline_op& op = s.order[s.next];
    const int vs = op.chunk * p + s.cfg.stage;
    tensor input;
    if (op.kind == pass_kind::weight) {
      // Needs nothing from outside: its own backward ran earlier in the order.
    } else if (op.kind == pass_kind::forward && vs == 0) {
      input = s.cfg.source(s.step, op.micro);
    } else {
      auto it = s.inbox.find({s.step, int(op.kind), op.micro, op.chunk});
      if (it == s.inbox.end()) return;  // wait for the message
      input = std::move(it->second);
      s.inbox.erase(it);
    }
    double t0 = now_s();
    tensor out;
    try {  // exceptions never cross the actor boundary: the reporter gets what failed
      auto& c = *s.cfg.compute;
      if (op.kind == pass_kind::forward)
        out = c.forward(op.chunk, s.step, op.micro, input);
      else if (op.kind == pass_kind::weight)
        c.backward_weight(op.chunk, s.step, op.micro);
      else
        out = split ? c.backward_input(op.chunk, s.step, op.micro, input) : c.backward(op.chunk, s.step, op.micro, input);
    } catch (const std::exception& e) {
      s.report.error = "stage " + std::to_string(s.cfg.stage) + " failed in the " + pass_name(op.kind) +
                       " pass of micro-batch " + std::to_string(op.micro) + " (chunk " + std::to_string(op.chunk) +
                       ") at step " + std::to_string(s.step) + ": " + e.what();
      self->send(s.reporter, s.report);
      s.order.clear();
      s.next = 0;
      self->quit(caf::sec::runtime_error);
      return;
    }
    double t1 = now_s();
    if (s.cfg.trace) {
      std::string name(1, "FBW"[int(op.kind)]);
      name += std::to_string(op.micro);
      if (s.chunks > 1) name += '.', name += std::to_string(op.chunk);
      s.cfg.trace->record({s.cfg.track, std::move(name), pass_name(op.kind), s.step, t0, t1});
    }
    s.report.busy_s += t1 - t0;
    s.report.end_s = t1;
    ++s.report.ops;
    ++s.next;
    if (op.kind == pass_kind::forward) {
      s.report.peak_stash = std::max(s.report.peak_stash, ++s.stash);
      if (vs + 1 < V) {
        self->send(s.peers[size_t((vs + 1) % p)],
                   pipe_msg{pipe_msg::activation, s.step, op.micro, vs + 1, 0, std::move(out)});
      } else {
        // The last virtual stage: `out` is the loss; its backward starts from the loss
        // scale of one micro-batch of a step's mean.
        s.report.loss_sum += out.numel() ? double(out.f32()[0]) : 0.0;
        tensor scale = tensor::empty({1});
        scale.f32()[0] = 1.0f / float(m);
        s.inbox[{s.step, int(pass_kind::backward), op.micro, op.chunk}] = std::move(scale);
      }
    } else if (op.kind == pass_kind::backward) {
      if (!split) --s.stash;
      if (vs > 0)
        self->send(s.peers[size_t((vs - 1) % p)],
                   pipe_msg{pipe_msg::gradient, s.step, op.micro, vs - 1, 0, std::move(out)});
    } else {
      --s.stash;  // the weight pass frees what the split backward kept
    }
  }
  if (s.report.ops > 0 && s.next == s.order.size()) {
    if (s.cfg.self_step) finish_step_alone(self);
    s.report.peak_stash_bytes = s.cfg.compute->peak_stash_bytes();
    self->send(s.reporter, s.report);
    s.report.ops = 0;  // reported once
  }
}

}  // namespace

caf::behavior stage(caf::stateful_actor<stage_state>* self, stage_config cfg) {
  self->state.cfg = std::move(cfg);
  self->state.chunks = self->state.cfg.schedule->chunks();
  return {
      [=](peers_atom, const std::vector<caf::actor>& peers, const caf::actor& reporter) {
        self->state.peers = peers;
        self->state.reporter = reporter;
      },
      [=](step_atom, int64_t step) {
        auto& s = self->state;
        s.step = step;
        try {
          s.order = s.cfg.schedule->order(s.cfg.stage, s.cfg.stages, s.cfg.micro_batches);
        } catch (const std::exception& e) {
          s.report = stage_report{};
          s.report.stage = s.cfg.stage;
          s.report.replica = s.cfg.replica;
          s.report.step = step;
          s.report.error = "stage " + std::to_string(s.cfg.stage) + ": schedule: " + e.what();
          self->send(s.reporter, s.report);
          return;
        }
        s.next = 0;
        s.stash = 0;
        s.report = stage_report{};
        s.report.stage = s.cfg.stage;
        s.report.replica = s.cfg.replica;
        s.report.step = step;
        s.report.start_s = s.report.end_s = now_s();
        // A detached actor keeps its thread: OpenMP's per-thread count set here holds.
        if (s.cfg.threads > 0) set_compute_threads(s.cfg.threads);
        s.cfg.compute->begin_step();
        start_averaging(s);
        // Anything left from an older step can never be used.
        for (auto it = s.inbox.begin(); it != s.inbox.end();)
          it = std::get<0>(it->first) < step ? s.inbox.erase(it) : std::next(it);
        advance(self);
      },
      [=](names_atom) { return self->state.cfg.compute->param_names(); },
      [=](grads_atom, const std::vector<std::string>& shared) -> caf::result<int32_t, int32_t, double, std::vector<tensor>> {
        auto& s = self->state;
        auto& c = *s.cfg.compute;
        try {
          average_over_replicas(s);
        } catch (const std::exception& e) {
          return caf::make_error(caf::sec::runtime_error, "stage " + std::to_string(s.cfg.stage) + " of replica " +
                                                              std::to_string(s.cfg.replica) + ", step " +
                                                              std::to_string(s.step) + ": " + e.what());
        }
        return caf::result<int32_t, int32_t, double, std::vector<tensor>>(
            int32_t(s.cfg.replica), int32_t(s.cfg.stage), c.grad_sum_squares(shared), c.grads_of(shared));
      },
      [=](apply_atom, const std::vector<std::string>& names, const std::vector<tensor>& totals, float clip_scale,
          float lr) {
        auto& s = self->state;
        double t0 = now_s();
        s.cfg.compute->apply_update(names, totals, clip_scale, lr);
        if (s.cfg.trace) s.cfg.trace->record({s.cfg.track, "opt", "optimizer", s.step, t0, now_s()});
        return int32_t(0);
      },
      [=](params_atom, const std::vector<std::string>& names) { return self->state.cfg.compute->params_of(names); },
      [=](pipe_msg& msg) {
        auto& s = self->state;
        const int p = s.cfg.stages;
        if (msg.step < s.step || msg.vstage % p != s.cfg.stage) {
          std::fprintf(stderr, "stage %d: dropped a message for step %lld, virtual stage %d\n", s.cfg.stage,
                       (long long)msg.step, msg.vstage);
          return;
        }
        pass_kind kind = msg.kind == pipe_msg::activation ? pass_kind::forward : pass_kind::backward;
        s.inbox[{msg.step, int(kind), msg.micro, msg.vstage / p}] = std::move(msg.t);
        if (msg.step == s.step) advance(self);
      },
  };
}

}  // namespace troupe
