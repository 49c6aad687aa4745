#include "actors/pipeline_coordinator.hpp"

#include <chrono>
#include <cmath>
#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "kernels/cpu/optim.hpp"     // sum_of_squares
#include "kernels/cpu/residual.hpp"  // residual_backward: a += b, for the shared gradients' sums
#include "actors/remote_stage.hpp"  // kPipeCollectiveTags
#include "runtime/check.hpp"  // exception_text
#include "runtime/optimizer.hpp"
#include "runtime/trace.hpp"  // steady_now_s: the metrics lines' t_mono
#include "transport/collectives.hpp"

namespace troupe {

namespace {

using coordinator_actor = caf::stateful_actor<pipeline_coordinator_state>*;

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Stops everything and tells the caller what failed. Survivors blocked in an all-reduce
// with a dead replica get an error now, not at the end of their deadline.
void fail(coordinator_actor self, const std::string& what) {
  auto& s = self->state;
  if (!s.failure.empty()) return;  // the first failure is the one to report
  s.failure = what;
  for (auto& g : s.g.groups) g->abort("the job failed: " + what);
  if (s.g.pipe) s.g.pipe->abort("the job failed: " + what);
  for (auto& st : s.all) self->send_exit(st, caf::exit_reason::user_shutdown);
  for (auto& st : s.g.proxies) self->send_exit(st, caf::exit_reason::user_shutdown);
  for (auto& d : s.g.devices) self->send_exit(d, caf::exit_reason::user_shutdown);
  self->send_exit(s.g.feeder, caf::exit_reason::user_shutdown);
  if (s.done.pending()) s.done.deliver(caf::make_error(caf::sec::runtime_error, "pipeline failed: " + what));
  self->quit();
}

void start_step(coordinator_actor self);
void begin_run(coordinator_actor self);
void end_step(coordinator_actor self, double norm, float lr);
void sync_gradients(coordinator_actor self);

// Every stage has reported the current step: account for it and go on.
void on_reports(coordinator_actor self) {
  auto& s = self->state;
  auto it = s.reports.find(s.step);
  if (it == s.reports.end() || it->second.size() < s.all.size()) return;
  const int p = int(s.g.stages[0].size()), R = int(s.g.stages.size());
  for (const stage_report& r : it->second) {
    s.loss_sum += r.loss_sum;
    s.busy[size_t((r.replica - s.g.first_replica) * p + r.stage)] = r.busy_s;
    auto& peak = s.g.out->peak_stash_mb[size_t(r.stage)];
    peak = std::max(peak, r.peak_stash_bytes / (1024.0 * 1024.0));
    if (r.grad_norm >= 0) s.self_norm = r.grad_norm;
  }
  s.reports.erase(it);
  float loss = float(s.loss_sum / (double(s.g.micro_batches) * R));
  if (s.g.global_loss) loss = s.g.global_loss(s.step, loss);  // a small all-reduce over the processes
  s.g.out->losses.push_back(loss);
  if (p > 1)
    sync_gradients(self);
  else  // each stage took its optimizer step itself
    end_step(self, s.self_norm, learning_rate(s.g.spec->optimizer(), s.step, s.g.total_steps));
}

// The last phase: every parameter (replica 0's copy) into the outcome.
void collect_params(coordinator_actor self) {
  auto& s = self->state;
  auto& out = *s.g.out;
  s.waiting = 0;
  for (size_t st = 0; st < s.g.stages[0].size(); ++st) s.waiting += s.g.local(int(st));
  for (size_t st = 0; st < s.g.stages[0].size(); ++st)
    if (s.g.local(int(st)))
    self->request(s.g.stages[0][st], caf::infinite, params_atom::value, out.layout[st])
        .then(
            [=](const std::vector<tensor>& ps) {
              auto& s = self->state;
              for (size_t k = 0; k < ps.size(); ++k) s.g.out->params.emplace(s.g.out->layout[st][k], ps[k].clone());
              if (--s.waiting == 0) {
                s.done.deliver(int32_t(0));
                self->quit();
              }
            },
            [=](caf::error& e) { fail(self, self->system().render(e)); });
}

// The step is over (optimizer steps done everywhere): record it, go on.
void end_step(coordinator_actor self, double norm, float lr) {
  auto& s = self->state;
  auto& out = *s.g.out;
  const double dt = now_s() - s.t0;
  out.step_s.push_back(dt);
  if (s.g.progress) {
    const auto& spec = *s.g.spec;
    int64_t samples = spec.train().batch_size();
    int64_t tokens = spec.model().has_gpt() ? samples * int64_t(spec.model().gpt().context()) : 0;
    // Busy fraction of each stage actor: compute time over the whole step's wall time.
    std::string extra = "\"busy\":[";
    for (size_t i = 0; i < s.busy.size(); ++i) {
      char b[24];
      std::snprintf(b, sizeof b, "%s%.3f", i ? "," : "", dt > 0 ? s.busy[i] / dt : 0.0);
      extra += b;
    }
    char stamp[48];
    std::snprintf(stamp, sizeof stamp, "],\"t_mono\":%.6f", steady_now_s());
    s.g.progress->step(s.step, out.losses.back(), lr, float(norm), samples, tokens, dt, extra + stamp);
  }
  if (s.g.on_step) s.g.on_step(s.step + 1);
  if (s.step + 1 < s.g.steps)
    start_step(self);
  else
    collect_params(self);
}

// Stages in several processes: the other stages' sums of squares and their parts of the
// shared gradients come from the processes of the pipe group, in one all-reduce (every
// process then holds the same totals and the same norm). A shared parameter this process
// holds no copy of still takes its part (zeros), so every process sums the same buffer.
void sum_over_pipe(coordinator_actor self) {
  auto& s = self->state;
  size_t n = 1;
  for (const auto& name : s.shared) n += size_t(s.numel.at(name));
  std::vector<float> buf(n, 0.0f);
  buf[0] = float(s.sum_sq);
  size_t at = 1;
  for (size_t k = 0; k < s.shared.size(); ++k) {
    const tensor& t = s.totals[k];
    if (t.defined()) std::copy(t.f32(), t.f32() + t.numel(), buf.begin() + std::ptrdiff_t(at));
    at += size_t(s.numel.at(s.shared[k]));
  }
  allreduce_sum(*s.g.pipe, buf.data(), n, kPipeCollectiveTags + 16 + uint64_t(s.step) * kTagsPerCollective);
  s.sum_sq = buf[0];
  at = 1;
  for (size_t k = 0; k < s.shared.size(); ++k) {
    const size_t len = size_t(s.numel.at(s.shared[k]));
    if (!s.totals[k].defined()) s.totals[k] = tensor::empty({int64_t(len)});
    std::copy(buf.begin() + std::ptrdiff_t(at), buf.begin() + std::ptrdiff_t(at + len), s.totals[k].f32());
    at += len;
  }
}

// The model spans several stages: each averages its gradients with its replicas and
// answers with its share of the norm and its shared gradients; replicas then hold equal
// gradients, so this process's first replica's give the sums. Then one clip for all and every optimizer step.
void sync_gradients(coordinator_actor self) {
  auto& s = self->state;
  s.sum_sq = 0;
  s.totals.assign(s.shared.size(), tensor{});
  s.waiting = s.all.size();
  for (auto& st : s.all)
    self->request(st, caf::infinite, grads_atom::value, s.shared)
        .then(
            [=](int32_t replica, int32_t, double partial, const std::vector<tensor>& grads) {
              auto& s = self->state;
              if (replica == s.g.first_replica) {
                s.sum_sq += partial;
                for (size_t k = 0; k < s.shared.size(); ++k) {
                  if (!grads[k].defined()) continue;
                  if (!s.totals[k].defined())
                    s.totals[k] = grads[k].clone();
                  else
                    kernels::residual_backward(s.totals[k].f32(), grads[k].f32(), s.totals[k].numel());
                }
              }
              if (--s.waiting > 0) return;
              if (s.g.pipe && s.g.before_update) s.g.before_update(s.step);
              if (s.g.pipe) sum_over_pipe(self);
              for (const tensor& t : s.totals)
                if (t.defined()) s.sum_sq += kernels::sum_of_squares(t.f32(), t.numel());
              const double norm = std::sqrt(s.sum_sq);
              const float scale = clip_coefficient(norm, s.g.spec->optimizer().grad_clip());
              const float lr = learning_rate(s.g.spec->optimizer(), s.step, s.g.total_steps);
              if (s.g.after_sum) s.g.after_sum(s.step, s.shared, s.totals, scale, lr);
              s.waiting = s.all.size();
              for (auto& st : s.all)
                self->request(st, caf::infinite, apply_atom::value, s.shared, s.totals, scale, lr)
                    .then(
                        [=](int32_t) {
                          if (--self->state.waiting == 0) end_step(self, norm, lr);
                        },
                        [=](caf::error& e) { fail(self, self->system().render(e)); });
            },
            [=](caf::error& e) { fail(self, self->system().render(e)); });
}

void start_step(coordinator_actor self) {
  auto& s = self->state;
  ++s.step;
  s.t0 = now_s();
  s.loss_sum = 0;
  s.self_norm = -1;
  s.busy.assign(s.g.stages.size() * s.g.stages[0].size(), 0.0);
  // Stages that step by themselves get the next step ahead too.
  const int64_t through = s.g.stages[0].size() == 1 ? std::min(s.step + 1, s.g.steps - 1) : s.step;
  // The feeder draws one step beyond what the stages have, while they compute.
  for (; s.drawn < std::min(through + 1, s.g.steps - 1); ++s.drawn) self->send(s.g.feeder, step_atom::value, s.drawn + 1);
  for (; s.sent < through; ++s.sent)
    for (auto& st : s.all) self->send(st, step_atom::value, s.sent + 1);
  on_reports(self);  // some may be in already
}

// The layout is known (this process's stages; with a pipe, every process's, gathered as
// lines "stage numel name"): find the shared parameters, start.
void begin_run(coordinator_actor self) {
  auto& s = self->state;
  auto& layout = s.g.out->layout;
  if (s.g.pipe) {
    std::string mine;
    for (size_t st = 0; st < layout.size(); ++st)
      for (const auto& name : layout[st]) mine += std::to_string(st) + " " + std::to_string(s.numel.at(name)) + " " + name + "\n";
    for (const std::string& text : all_gather_text(*s.g.pipe, mine, kPipeCollectiveTags)) {
      std::istringstream lines(text);
      size_t st = 0;
      int64_t numel = 0;
      std::string name;
      while (lines >> st >> numel >> name) {
        if (st >= layout.size()) throw std::runtime_error("a pipe peer's layout names stage " + std::to_string(st));
        if (!s.g.local(int(st))) layout[st].push_back(name);
        s.numel[name] = numel;
      }
    }
  }
  std::map<std::string, int> holders;
  for (const auto& names : layout)
    for (const auto& n : names) ++holders[n];
  for (const auto& [name, count] : holders)
    if (count > 1) s.shared.push_back(name);
  if (s.g.steps > s.g.first_step)
    start_step(self);
  else
    collect_params(self);
}

}  // namespace

caf::behavior pipeline_coordinator(caf::stateful_actor<pipeline_coordinator_state>* self, pipeline_graph g) {
  auto& s = self->state;
  s.g = std::move(g);
  s.step = s.sent = s.drawn = s.g.first_step - 1;
  for (auto& replica : s.g.stages)
    for (size_t st = 0; st < replica.size(); ++st)
      if (s.g.local(int(st))) s.all.push_back(replica[st]);
  for (auto& replica : s.g.stages)
    for (size_t st = 0; st < replica.size(); ++st)
      if (s.g.local(int(st))) {
        self->send(replica[st], peers_atom::value, replica, caf::actor_cast<caf::actor>(self));
        self->monitor(replica[st]);
      }
  for (auto& d : s.g.devices) self->monitor(d);
  for (auto& x : s.g.proxies) self->monitor(x);
  self->monitor(s.g.feeder);
  self->set_down_handler([=](const caf::down_msg& d) {
    fail(self, "a stage, device or feeder actor stopped: " + self->system().render(d.reason));
  });
  // A handler that throws (the progress log's disk, the data's indices) fails the job like
  // any other failure: the caller gets the error, the graph is stopped.
  self->set_exception_handler([=](caf::scheduled_actor*, std::exception_ptr& e) -> caf::error {
    std::string what = exception_text(e);
    fail(self, "the coordinator failed: " + what);
    return caf::make_error(caf::sec::runtime_error, what);
  });
  const int p = int(s.g.stages[0].size());
  s.g.out->peak_stash_mb.assign(size_t(p), 0.0);
  for (int st = 0; st < p; ++st)
    if (!s.g.local(st)) s.g.out->peak_stash_mb[size_t(st)] = -1;  // measured by the process holding it
  return {
      [=](run_atom) {
        auto& s = self->state;
        s.done = self->make_response_promise();
        // Which stages hold which parameters; names held by more than one are shared.
        s.g.out->layout.assign(size_t(p), {});
        s.waiting = 0;
        for (int st = 0; st < p; ++st) s.waiting += s.g.local(st);
        for (int st = 0; st < p; ++st)
          if (s.g.local(st))
          self->request(s.g.stages[0][size_t(st)], caf::infinite, names_atom::value)
              .then(
                  [=](const std::vector<std::string>& names) {
                    self->request(self->state.g.stages[0][size_t(st)], caf::infinite, params_atom::value, names)
                        .then(
                            [=](const std::vector<tensor>& params) {
                              auto& s = self->state;
                              s.g.out->layout[size_t(st)] = names;
                              for (size_t k = 0; k < names.size(); ++k) s.numel[names[k]] = params[k].numel();
                              if (--s.waiting == 0) begin_run(self);
                            },
                            [=](caf::error& e) { fail(self, self->system().render(e)); });
                  },
                  [=](caf::error& e) { fail(self, self->system().render(e)); });
        return s.done;
      },
      [=](const stage_report& r) {
        auto& s = self->state;
        if (!r.error.empty()) return fail(self, r.error);
        s.reports[r.step].push_back(r);
        on_reports(self);
      },
  };
}

}  // namespace troupe
