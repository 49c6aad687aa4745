#include "actors/stage.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <set>

#include "runtime/check.hpp"      // exception_text
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
  int stage = 0;
  std::vector<caf::actor> peers;  // the stage actors of this replica, by stage
  std::shared_ptr<stage_compute> compute;
  std::shared_ptr<bucketed_allreduce> buckets;
  std::shared_ptr<trace_recorder> trace;
  int track = 0;
  int64_t step = 0;
  int replica = 0;
  std::shared_ptr<stage_snapshots> snapshots;
  std::function<void(int64_t, const tensor&)> on_grads;
  void record(const char* name, const char* category, double t0) const {
    if (trace) trace->record({track, name, category, step, t0, now_s()});
  }
};

task_view view_of(const stage_state& s) {
  return {s.cfg.stage, s.peers, s.cfg.compute, s.buckets, s.cfg.trace, s.cfg.track, s.step, s.cfg.replica,
          s.cfg.snapshots, s.cfg.on_grads};
}

// After the optimizer step of v.step: the in-memory snapshot, when one is due.
void snapshot_if_due(const task_view& v) {
  if (!v.snapshots || !v.snapshots->due(v.step + 1)) return;
  double t0 = now_s();
  v.snapshots->take(v.replica, v.stage, v.step + 1, *v.compute);
  v.record("snap", "snapshot", t0);
}

void finish_averaging(const task_view& v) {
  if (!v.buckets) return;
  double t0 = now_s();
  v.buckets->finish();
  v.record("sync", "allreduce", t0);
}

// Where an op's output goes: the (kind, micro, chunk) key of the op that consumes it and
// the stage that runs that op. The last virtual stage's forward feeds its own backward
// (with the loss scale); a weight pass feeds nobody.
struct route {
  bool any = false;
  int stage = 0;
  std::tuple<int, int, int> key;  // (kind, micro, chunk) on that stage
};

route route_of(const stage_state& s, const pipeline_op& op) {
  const int p = s.cfg.stages, V = p * s.chunks, vs = op.chunk * p + s.cfg.stage;
  if (op.kind == pass_kind::forward) {
    if (vs + 1 < V) return {true, (vs + 1) % p, {int(pass_kind::forward), op.micro, (vs + 1) / p}};
    return {true, s.cfg.stage, {int(pass_kind::backward), op.micro, op.chunk}};
  }
  if (op.kind == pass_kind::backward && vs > 0)
    return {true, (vs - 1) % p, {int(pass_kind::backward), op.micro, (vs - 1) / p}};
  return {};
}

// Consecutive ops of a stage's order that one device task runs back to back: each one's
// input was at hand when the task was made, or an earlier op of the task produces it on
// this stage. One task instead of one per op: on a short step (the MLP's is ~2.5 ms) the
// round trips to the device are otherwise a tenth of it.
struct pass_batch {
  struct item {
    pipeline_op op;
    tensor input;              // at hand (inbox or data source); undefined if none or local
    tensor examples;           // the micro-batch's examples, for a forward that reads data
    bool local_input = false;  // produced by an earlier op of this batch
    route to;
    tensor out;
    double t0 = 0, t1 = 0;
  };
  std::vector<item> items;
  bool begin = false;   // zero the gradients first (the step's first task)
  bool last = false;    // ends the step's order: send the remaining gradient buckets
  bool finish = false;  // and, holding the whole model, average, clip and step
  float max_norm = 0, lr = 0, loss_scale = 1;
  // Written on the device:
  size_t done = 0;  // items completed
  bool op_failed = false;  // error is from item `done` (else from begin or finish)
  std::string error;
  double norm = -1;
  std::map<std::tuple<int, int, int>, tensor> left;  // local outputs no item consumed
};

void run_batch(pass_batch& b, const task_view& v, bool split) {
  std::map<std::tuple<int, int, int>, tensor> local;
  try {
    if (b.begin) v.compute->begin_step();
    for (auto& it : b.items) {
      const pipeline_op& op = it.op;
      tensor input = it.input;
      if (it.local_input) {
        auto f = local.find({int(op.kind), op.micro, op.chunk});
        input = std::move(f->second);
        local.erase(f);
      }
      it.t0 = now_s();
      b.op_failed = true;
      if (it.examples.defined()) v.compute->feed(v.step, op.micro, it.examples);
      if (op.kind == pass_kind::forward)
        it.out = v.compute->forward(op.chunk, v.step, op.micro, input);
      else if (op.kind == pass_kind::weight)
        v.compute->backward_weight(op.chunk, v.step, op.micro);
      else
        it.out = split ? v.compute->backward_input(op.chunk, v.step, op.micro, input)
                       : v.compute->backward(op.chunk, v.step, op.micro, input);
      it.t1 = now_s();
      b.op_failed = false;
      if (it.to.any && it.to.stage != v.stage) {
        // Another stage waits for this: send it now, not when the whole batch is done.
        const int vs = std::get<2>(it.to.key) * int(v.peers.size()) + it.to.stage;
        auto kind = std::get<0>(it.to.key) == int(pass_kind::forward) ? pipe_msg::activation : pipe_msg::gradient;
        // Synchronous training: the parameters of step k are version k on every stage.
        caf::anon_send(v.peers[size_t(it.to.stage)], pipe_msg{kind, v.step, op.micro, vs, v.step, it.out});
      } else if (it.to.any) {
        if (std::get<0>(it.to.key) == int(pass_kind::backward) && op.kind == pass_kind::forward) {
          tensor scale = tensor::empty({1});  // the last virtual stage: d(step mean)/d(this loss)
          scale.f32()[0] = b.loss_scale;
          local[it.to.key] = std::move(scale);
        } else {
          local[it.to.key] = it.out;
        }
      }
      ++b.done;
    }
    if (b.last && v.buckets) v.buckets->flush();
    if (b.finish) {
      finish_averaging(v);
      double norm = std::sqrt(v.compute->grad_sum_squares({}));
      double t0 = now_s();
      v.compute->apply_update({}, {}, clip_coefficient(norm, b.max_norm), b.lr);
      v.record("opt", "optimizer", t0);
      snapshot_if_due(v);
      b.norm = norm;
    }
  } catch (const std::exception& e) {
    b.error = e.what();
  }
  b.left = std::move(local);
}

void advance(stage_actor self);
void begin_step(stage_actor self, int64_t step);

// The batch is back from the device (which sent outputs for other stages as they were
// made): account for each op, keep local outputs no op of the batch used, report or go on.
void batch_done(stage_actor self, pass_batch& b) {
  auto& s = self->state;
  const bool split = s.cfg.schedule->splits_backward();
  s.computing = false;
  for (size_t i = 0; i < b.done; ++i) {
    const auto& it = b.items[i];
    const pipeline_op& op = it.op;
    if (s.cfg.trace) {
      std::string name(1, "FBW"[int(op.kind)]);
      name += std::to_string(op.micro);
      if (s.chunks > 1) name += '.', name += std::to_string(op.chunk);
      s.cfg.trace->record({s.cfg.track, std::move(name), pass_name(op.kind), s.step, it.t0, it.t1});
    }
    s.report.busy_s += it.t1 - it.t0;
    s.report.end_s = it.t1;
    ++s.report.ops;
    ++s.next;
    if (op.kind == pass_kind::forward) {
      s.report.peak_stash = std::max(s.report.peak_stash, ++s.stash);
      if (it.to.stage == s.cfg.stage && std::get<0>(it.to.key) == int(pass_kind::backward))
        s.report.loss_sum += it.out.numel() ? double(it.out.f32()[0]) : 0.0;  // the loss
    } else if (op.kind == pass_kind::backward) {
      if (!split) --s.stash;
    } else {
      --s.stash;  // the weight pass frees what the split backward kept
    }
  }
  if (!b.error.empty()) {
    if (b.op_failed) {
      const pipeline_op& op = b.items[b.done].op;
      return fail_step(self, "stage " + std::to_string(s.cfg.stage) + " failed in the " + pass_name(op.kind) +
                                 " pass of micro-batch " + std::to_string(op.micro) + " (chunk " +
                                 std::to_string(op.chunk) + ") at step " + std::to_string(s.step) + ": " + b.error);
    }
    return fail_step(self, where(s) + ": " + b.error);
  }
  for (auto& [key, t] : b.left) s.inbox[{s.step, std::get<0>(key), std::get<1>(key), std::get<2>(key)}] = std::move(t);
  if (s.next == s.order.size()) {
    s.report.peak_stash_bytes = s.cfg.compute->peak_stash_bytes();
    if (b.finish) s.report.grad_norm = b.norm;
    self->send(s.reporter, s.report);
    s.report.ops = 0;  // reported once
    s.in_step = false;
    if (!s.queued_steps.empty()) {
      int64_t next = s.queued_steps.front();
      s.queued_steps.pop_front();
      begin_step(self, next);
    }
    return;
  }
  advance(self);
}

// Hands the device every next op of the step's order it can run without waiting for
// another stage, in one task; the reply brings the stage back here.
void advance(stage_actor self) {
  auto& s = self->state;
  if (s.computing || s.next == s.order.size()) return;
  auto b = std::make_shared<pass_batch>();
  std::set<std::tuple<int, int, int>> produced;  // local outputs of the batch so far
  for (size_t i = s.next; i < s.order.size(); ++i) {
    pass_batch::item it;
    it.op = s.order[i];
    const pipeline_op& op = it.op;
    const int vs = op.chunk * s.cfg.stages + s.cfg.stage;
    const std::tuple<int, int, int> need{int(op.kind), op.micro, op.chunk};
    if (s.cfg.fed && op.kind == pass_kind::forward && (vs == 0 || vs == s.chunks * s.cfg.stages - 1)) {
      auto d = s.data.find({s.step, op.micro});
      if (d == s.data.end()) break;  // waits for the feeder
      it.examples = d->second;
    }
    if (op.kind == pass_kind::weight) {
      // Needs nothing from outside: its own backward ran earlier in the order.
    } else if (op.kind == pass_kind::forward && vs == 0) {
      if (!s.cfg.fed) it.input = s.cfg.source(s.step, op.micro);
    } else if (auto f = s.inbox.find({s.step, int(op.kind), op.micro, op.chunk}); f != s.inbox.end()) {
      it.input = std::move(f->second);
      s.inbox.erase(f);
    } else if (produced.erase(need)) {
      it.local_input = true;
    } else {
      break;  // waits for another stage
    }
    it.to = route_of(s, op);
    if (it.to.any && it.to.stage == s.cfg.stage) produced.insert(it.to.key);
    b->items.push_back(std::move(it));
  }
  if (b->items.empty()) return;  // wait for a message
  b->begin = s.next == 0;
  b->last = s.next + b->items.size() == s.order.size();
  b->finish = b->last && s.cfg.self_step;
  b->max_norm = s.cfg.max_norm;
  b->lr = b->finish ? s.cfg.lr_at(s.step) : 0.0f;
  b->loss_scale = 1.0f / float(s.cfg.micro_batches);
  s.computing = true;
  task_view v = view_of(s);
  const bool split = s.cfg.schedule->splits_backward();
  on_device(
      self, [=] { run_batch(*b, v, split); },
      [=](const std::string& device_error) {
        if (!device_error.empty()) {
          self->state.computing = false;
          return fail_step(self, where(self->state) + ": " + device_error);
        }
        batch_done(self, *b);
      });
}

void begin_step(stage_actor self, int64_t step) {
  auto& s = self->state;
  s.in_step = true;
  s.step = step;
  s.report = stage_report{};
  s.report.stage = s.cfg.stage;
  s.report.replica = s.cfg.replica;
  s.report.step = step;
  try {
    s.order = s.cfg.schedule->order(s.cfg.stage, s.cfg.stages, s.cfg.micro_batches);
  } catch (const std::exception& e) {
    return fail_step(self, "stage " + std::to_string(s.cfg.stage) + ": schedule: " + e.what());
  }
  s.next = 0;
  s.stash = 0;
  s.report.start_s = s.report.end_s = now_s();
  // Anything left from an older step can never be used.
  for (auto it = s.inbox.begin(); it != s.inbox.end();)
    it = std::get<0>(it->first) < step ? s.inbox.erase(it) : std::next(it);
  for (auto it = s.data.begin(); it != s.data.end();) it = it->first.first < step ? s.data.erase(it) : std::next(it);
  start_averaging(s);
  advance(self);  // the first task also zeroes the gradients
}

}  // namespace

caf::behavior stage(caf::stateful_actor<stage_state>* self, stage_config cfg) {
  self->state.cfg = std::move(cfg);
  self->state.chunks = self->state.cfg.schedule->chunks();
  // An exception in a handler (outside the passes, which catch their own) ends the stage;
  // its reporter hears what failed, and so does everyone monitoring it.
  self->set_exception_handler([=](caf::scheduled_actor*, std::exception_ptr& e) -> caf::error {
    std::string what = exception_text(e);
    auto& s = self->state;
    what = "stage " + std::to_string(s.cfg.stage) + " of replica " + std::to_string(s.cfg.replica) + ": " + what;
    if (s.reporter) {
      s.report.error = what;
      self->send(s.reporter, s.report);
    }
    return caf::make_error(caf::sec::runtime_error, what);
  });
  return {
      [=](peers_atom, const std::vector<caf::actor>& peers, const caf::actor& reporter) {
        self->state.peers = peers;
        self->state.reporter = reporter;
      },
      [=](step_atom, int64_t step) {
        auto& s = self->state;
        if (s.in_step)
          s.queued_steps.push_back(step);  // sent ahead: starts when this one is done
        else
          begin_step(self, step);
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
                if (v.on_grads) v.on_grads(v.step, v.compute->flat_grads());
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
                snapshot_if_due(v);
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
      [=](data_msg& msg) {
        auto& s = self->state;
        if (msg.step < s.step) return;  // a step already done (cannot happen while synchronous)
        s.data[{msg.step, msg.micro}] = std::move(msg.examples);
        if (msg.step == s.step) advance(self);
      },
      [=](pipe_msg& msg) {
        auto& s = self->state;
        const int p = s.cfg.stages;
        if (msg.step < s.step || msg.vstage % p != s.cfg.stage || msg.version != msg.step) {
          std::fprintf(stderr, "stage %d: dropped a message for step %lld, virtual stage %d, parameter version %lld\n",
                       s.cfg.stage, (long long)msg.step, msg.vstage, (long long)msg.version);
          return;
        }
        pass_kind kind = msg.kind == pipe_msg::activation ? pass_kind::forward : pass_kind::backward;
        s.inbox[{msg.step, int(kind), msg.micro, msg.vstage / p}] = std::move(msg.t);
        if (msg.step == s.step) advance(self);
      },
  };
}

}  // namespace troupe
