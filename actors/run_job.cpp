#include "actors/run_job.hpp"

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "actors/pipeline_job.hpp"
#include "runtime/threads.hpp"

namespace troupe {

job_outcome run_job(const proto::JobSpec& spec, const coordinator_options& opts) {
  auto data = load_training_data(spec);  // bad data fails here, before any actor starts
  job_outcome out;
  out.steps = total_steps(spec, *data);
  if (out.steps == 0)
    throw input_error("train: the job has 0 steps (batch_size " + std::to_string(spec.train().batch_size()) +
                      " is larger than the training set)");
  caf::actor_system_config cfg;
  register_message_types(cfg);
  caf::actor_system sys{cfg};
  auto t0 = std::chrono::steady_clock::now();
  if (spec.parallel().stages() > 1 || spec.parallel().replicas() > 1) {
    // Pipeline stages as actors; then the assembled model is evaluated here.
    progress_log progress(spec, out.steps, opts.display());
    pipeline_options popts = pipeline_options::from(spec);
    popts.trace = std::make_shared<trace_recorder>();
    // Tracks in replica-major order, so the timeline reads top to bottom.
    for (int r = 0; r < popts.replicas; ++r)
      for (int s = 0; s < popts.stages; ++s) popts.trace->track("replica " + std::to_string(r) + " stage " + std::to_string(s));
    pipeline_outcome po = run_pipeline_training(sys, spec, popts, out.steps, &progress);
    out.peak_stash_mb = po.peak_stash_mb;
    set_compute_threads(int(spec.train().threads()));
    trainer whole(spec, out.steps);
    const param_table& table = whole.net().table;
    for (size_t i = 0; i < table.entries().size(); ++i)
      whole.params().get(int(i)).copy_from(po.params.at(table.entries()[i].name));
    batch ev = batch_source(spec, data).eval_set();
    eval_result r = whole.evaluate(ev.x, ev.y, spec.train().batch_size());
    out.eval = eval_report{r.loss, r.accuracy, r.count};
    progress.eval(r.loss, r.accuracy, r.count);
    if (spec.model().has_gpt() && spec.train().sample_tokens() > 0)
      out.sample = whole.generate("\n", int(spec.train().sample_tokens()), spec.train().seed());
    progress.finish();
    std::string dir = std::filesystem::path(spec.train().metrics_file()).parent_path().string();
    if (dir.empty()) dir = ".";
    try {
      popts.trace->write_chrome_trace(dir + "/trace.json");
      int64_t last = out.steps - 1;
      popts.trace->write_timeline_svg(dir + "/timeline.svg",
                                      spec.name() + ": steps " + std::to_string(std::max<int64_t>(0, last - 1) + 1) +
                                          "-" + std::to_string(last + 1) + ", " + spec.parallel().schedule(),
                                      std::max<int64_t>(0, last - 1), last);
      out.trace_path = dir + "/trace.json";
      out.timeline_path = dir + "/timeline.svg";
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe: warning: %s\n", e.what());
    }
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return out;
  }
  auto coord = sys.spawn(coordinator, spec, data, opts);
  caf::scoped_actor self{sys};
  std::string failure;
  self->request(coord, caf::infinite, run_atom::value)
      .receive(
          [&](const eval_report& ev, const std::string& sample) {
            out.eval = ev;
            out.sample = sample;
          },
          [&](const caf::error& err) { failure = sys.render(err); });
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!failure.empty()) throw std::runtime_error("job failed: " + failure);
  return out;
}

}  // namespace troupe
