#include "actors/stage.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "runtime/optimizer.hpp"  // clip_coefficient

namespace troupe {

namespace {

using stage_actor = caf::stateful_actor<stage_state>*;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

const char* pass_name(pass_kind k) {
  return k == pass_kind::forward ? "forward" : k == pass_kind::backward ? "backward" : "weight-gradient";
}

std::string where(const stage_state& s) {
  return "stage " + std::to_string(s.cfg.stage) + " of replica " + std::to_string(s.cfg.replica) + ", step " +
         std::to_string(s.step);
}

bool has_replicas(const stage_state& s) { return s.cfg.replica_group && s.cfg.replica_group->size() > 1; }

// Runs `work` on the stage's device; `then` runs back on the stage once it is done.
// Tasks catch their own exceptions (they return what failed); a device that cannot run
// the task at all (it died) is an error for the step too.
template <class Then>
void on_device(stage_actor self, std::function<void()> work, Then then) {
  auto task = device_task{std::make_shared<std::function<void()>>(std::move(work))};
  self->request(self->state.cfg.device, caf::infinite, run_atom::value, task)
      .then([=](int32_t) mutable { then(std::string{}); },
            [=](caf::error& e) mutable { then("its device failed: " + self->system().render(e)); });
}

// Reports the step's failure and stops: the reporter sees what failed, where.
void fail_step(stage_actor self, const std::string& what) {
  auto& s = self->state;
  s.report.error = what;
  self->send(s.reporter, s.report);
  s.order.clear();
  s.next = 0;
  self->quit(caf::sec::runtime_error);
}

// Before a step's passes (on the stage): gradients will be averaged over the replicas in
// buckets, each started as the compute reports it final (one group per stage: the same
// stage of every replica).
void start_averaging(stage_state& s) {
  if (!has_replicas(s)) return;
  if (!s.buckets) {
    tensor g = s.cfg.compute->flat_grads();
    bucketed_allreduce::span_fn on_span;
    if (s.cfg.trace)
      on_span = [trace = s.cfg.trace, track = s.cfg.comm_track](int bucket, int64_t step, size_t elems, double t0,
                                                                 double t1) {
        trace->record({track, "AR" + std::to_string(bucket) + " " + std::to_string(elems * 4 / 1024) + "K",
                       "allreduce", step, t0, t1});
      };
    s.buckets = std::make_shared<bucketed_allreduce>(s.cfg.replica_group, g.f32(), size_t(g.numel()),
                                                     s.cfg.bucket_elems ? s.cfg.bucket_elems : size_t(g.numel()),
                                                     std::move(on_span));
    if (s.cfg.bucket_elems) {
      // The compute keeps the buckets alive while it can still call them.
      s.cfg.compute->on_grads_ready([b = s.buckets](size_t begin, size_t end) { b->ready(begin, end); });
    }
  }
  s.buckets->begin_step(s.step, uint64_t(s.step) << 32);
}

// After the passes (on the device): waits until every bucket is averaged. The wait shows
// on the stage's track, the all-reduces themselves on its communication track.
// What tasks on the device may touch of a stage's configuration: copies, so a task never
// reads the stage's state (the stage may be gone by the time a task runs).
struct task_view {
  std::shared_ptr<stage_compute> compute;
  std::shared_ptr<bucketed_allreduce> buckets;
  std::shared_ptr<trace_recorder> trace;
  int track = 0;
  int64_t step = 0;
  void record(const char* name, const char* category, double t0) const {
    if (trace) trace->record({track, name, category, step, t0, now_s()});
  }
};

task_view view_of(const stage_state& s) { return {s.cfg.compute, s.buckets, s.cfg.trace, s.cfg.track, s.step}; }

void finish_averaging(const task_view& v) {
  if (!v.buckets) return;
  double t0 = now_s();
  v.buckets->finish();
  v.record("sync", "allreduce", t0);
}

void advance(stage_actor self);

// The step's order is done: a stage that holds the whole model averages, clips and
// steps by itself (one task), then reports.
void finish_step(stage_actor self) {
  auto& s = self->state;
  s.report.peak_stash_bytes = s.cfg.compute->peak_stash_bytes();
  if (!s.cfg.self_step) {
    self->send(s.reporter, s.report);
    return;
  }
  auto out = std::make_shared<std::pair<double, std::string>>(-1.0, std::string{});  // norm, error
  const task_view v = view_of(s);
  const float max_norm = s.cfg.max_norm, lr = s.cfg.lr_at(s.step);
  on_device(
      self,
      [=] {
        try {
          finish_averaging(v);
          double norm = std::sqrt(v.compute->grad_sum_squares({}));
          double t0 = now_s();
          v.compute->apply_update({}, {}, clip_coefficient(norm, max_norm), lr);
          v.record("opt", "optimizer", t0);
          out->first = norm;
        } catch (const std::exception& e) {
          out->second = e.what();
        }
      },
      [=](const std::string& device_error) {
        auto& s = self->state;
        std::string error = device_error.empty() ? out->second : device_error;
        if (!error.empty()) return fail_step(self, where(s) + ": " + error);
        s.report.grad_norm = out->first;
        self->send(s.reporter, s.report);
      });
}

// One pass's outcome, written on the device, read on the stage after the reply.
struct pass_result {
  tensor out;
  double t0 = 0, t1 = 0;
  std::string error;
};

// The pass finished on the device: account for it, send its output on, go on.
void pass_done(stage_actor self, const pipeline_op& op, const pass_result& r) {
  auto& s = self->state;
  const int p = s.cfg.stages, V = p * s.chunks, vs = op.chunk * p + s.cfg.stage;
  const bool split = s.cfg.schedule->splits_backward();
  s.computing = false;
  if (!r.error.empty())
    return fail_step(self, "stage " + std::to_string(s.cfg.stage) + " failed in the " + pass_name(op.kind) +
                               " pass of micro-batch " + std::to_string(op.micro) + " (chunk " +
                               std::to_string(op.chunk) + ") at step " + std::to_string(s.step) + ": " + r.error);
  if (s.cfg.trace) {
    std::string name(1, "FBW"[int(op.kind)]);
    name += std::to_string(op.micro);
    if (s.chunks > 1) name += '.', name += std::to_string(op.chunk);
    s.cfg.trace->record({s.cfg.track, std::move(name), pass_name(op.kind), s.step, r.t0, r.t1});
  }
  s.report.busy_s += r.t1 - r.t0;
  s.report.end_s = r.t1;
  ++s.report.ops;
  ++s.next;
  if (op.kind == pass_kind::forward) {
    s.report.peak_stash = std::max(s.report.peak_stash, ++s.stash);
    if (vs + 1 < V) {
      self->send(s.peers[size_t((vs + 1) % p)], pipe_msg{pipe_msg::activation, s.step, op.micro, vs + 1, 0, r.out});
    } else {
      // The last virtual stage: `out` is the loss; its backward starts from the loss
      // scale of one micro-batch of a step's mean.
      s.report.loss_sum += r.out.numel() ? double(r.out.f32()[0]) : 0.0;
      tensor scale = tensor::empty({1});
      scale.f32()[0] = 1.0f / float(s.cfg.micro_batches);
      s.inbox[{s.step, int(pass_kind::backward), op.micro, op.chunk}] = std::move(scale);
    }
  } else if (op.kind == pass_kind::backward) {
    if (!split) --s.stash;
    if (vs > 0)
      self->send(s.peers[size_t((vs - 1) % p)], pipe_msg{pipe_msg::gradient, s.step, op.micro, vs - 1, 0, r.out});
  } else {
    --s.stash;  // the weight pass frees what the split backward kept
  }
  advance(self);
}

// Hands the next op of the current step's order to the device once its input is at
// hand; one op at a time (the device's reply brings the stage back here).
void advance(stage_actor self) {
  auto& s = self->state;
  if (s.computing) return;
  if (s.next == s.order.size()) {
    if (s.report.ops > 0) {
      // Everything this step's passes did not send yet goes now, without waiting: the
      // device may be shared with stages whose buckets the replicas wait for.
      if (s.buckets) s.buckets->flush();
      finish_step(self);
      s.report.ops = 0;  // reported once
    }
    return;
  }
  const pipeline_op op = s.order[s.next];
  const int vs = op.chunk * s.cfg.stages + s.cfg.stage;
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
  s.computing = true;
  auto r = std::make_shared<pass_result>();
  auto compute = s.cfg.compute;
  const bool split = s.cfg.schedule->splits_backward();
  const int64_t step = s.step;
  on_device(
      self,
      [=] {
        r->t0 = now_s();
        try {  // exceptions never cross the actor boundary: the reporter gets what failed
          if (op.kind == pass_kind::forward)
            r->out = compute->forward(op.chunk, step, op.micro, input);
          else if (op.kind == pass_kind::weight)
            compute->backward_weight(op.chunk, step, op.micro);
          else
            r->out = split ? compute->backward_input(op.chunk, step, op.micro, input)
                           : compute->backward(op.chunk, step, op.micro, input);
        } catch (const std::exception& e) {
          r->error = e.what();
        }
        r->t1 = now_s();
      },
      [=](const std::string& device_error) {
        if (!device_error.empty()) r->error = device_error;
        pass_done(self, op, *r);
      });
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
        s.report = stage_report{};
        s.report.stage = s.cfg.stage;
        s.report.replica = s.cfg.replica;
        s.report.step = step;
        try {
          s.order = s.cfg.schedule->order(s.cfg.stage, s.cfg.stages, s.cfg.micro_batches);
        } catch (const std::exception& e) {
          s.report.error = "stage " + std::to_string(s.cfg.stage) + ": schedule: " + e.what();
          self->send(s.reporter, s.report);
          return;
        }
        s.next = 0;
        s.stash = 0;
        s.report.start_s = s.report.end_s = now_s();
        // Anything left from an older step can never be used.
        for (auto it = s.inbox.begin(); it != s.inbox.end();)
          it = std::get<0>(it->first) < step ? s.inbox.erase(it) : std::next(it);
        start_averaging(s);
        // Zeroing the gradients is compute: the device does it, then the passes start.
        s.computing = true;
        auto compute = s.cfg.compute;
        auto error = std::make_shared<std::string>();
        on_device(
            self,
            [=] {
              try {
                compute->begin_step();
              } catch (const std::exception& e) {
                *error = e.what();
              }
            },
            [=](const std::string& device_error) {
              self->state.computing = false;
              std::string what = device_error.empty() ? *error : device_error;
              if (!what.empty()) return fail_step(self, where(self->state) + ": " + what);
              advance(self);
            });
      },
      [=](names_atom) { return self->state.cfg.compute->param_names(); },
      [=](grads_atom, const std::vector<std::string>& shared) {
        auto& s = self->state;
        auto rp = self->make_response_promise<int32_t, int32_t, double, std::vector<tensor>>();
        struct result {
          double sum_sq = 0;
          std::vector<tensor> grads;
          std::string error;
        };
        auto r = std::make_shared<result>();
        const task_view v = view_of(s);
        on_device(
            self,
            [=] {
              try {
                finish_averaging(v);
                r->sum_sq = v.compute->grad_sum_squares(shared);
                r->grads = v.compute->grads_of(shared);
              } catch (const std::exception& e) {
                r->error = e.what();
              }
            },
            [=](const std::string& device_error) mutable {
              std::string what = device_error.empty() ? r->error : device_error;
              if (!what.empty())
                rp.deliver(caf::make_error(caf::sec::runtime_error, where(self->state) + ": " + what));
              else
                rp.deliver(int32_t(self->state.cfg.replica), int32_t(self->state.cfg.stage), r->sum_sq, r->grads);
            });
        return rp;
      },
      [=](apply_atom, const std::vector<std::string>& names, const std::vector<tensor>& totals, float clip_scale,
          float lr) {
        auto& s = self->state;
        auto rp = self->make_response_promise<int32_t>();
        const task_view v = view_of(s);
        auto error = std::make_shared<std::string>();
        on_device(
            self,
            [=] {
              try {
                double t0 = now_s();
                v.compute->apply_update(names, totals, clip_scale, lr);
                v.record("opt", "optimizer", t0);
              } catch (const std::exception& e) {
                *error = e.what();
              }
            },
            [=](const std::string& device_error) mutable {
              std::string what = device_error.empty() ? *error : device_error;
              if (!what.empty())
                rp.deliver(caf::make_error(caf::sec::runtime_error, where(self->state) + ": " + what));
              else
                rp.deliver(int32_t(0));
            });
        return rp;
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
