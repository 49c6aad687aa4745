// troupe bench recovery: what losing one of 4 data-parallel workers costs. The job is the
// Fashion-MNIST MLP as 4 processes under troupe launch (tcp between them, one compute
// thread each). In the same sitting it runs:
//   - baselines: no failure, 3 seeds (the seed-to-seed spread of the final test loss, and
//     the median step time);
//   - respawn: SIGKILL of one worker at a random step (seeded: --seed), elastic.mode
//     "respawn": the survivors go on as 3, a replacement joins and takes the state of a
//     live peer;
//   - restart_all: the same kill with elastic.mode "restart_all" and a checkpoint after
//     every step (torchrun's answer: everyone stops and reloads the newest checkpoint).
// For each failure run it prints the detection latency (kill to the coordinator's word of
// the loss), the time from detection to the first completed step after it, the steps lost
// (the step in flight plus any completed step that had to be done again), and the time
// from the kill to that step; also the in-memory snapshot's share of a step (a copy of
// parameters and optimizer state after every step, pipelined with the next step): inside
// the run, and alone as steps with and without it. It checks its own answers: every run
// must finish every step and end within the baselines' spread of the final loss (with a
// floor of 0.02), or the bench fails. Table, then JSON.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "apps/bench.hpp"
#include "runtime/background_snapshot.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"
#include "runtime/trace.hpp"  // steady_now_s: the clock of the t_mono stamps
#include "runtime/training.hpp"

extern char** environ;

namespace troupe {

namespace {

namespace fs = std::filesystem;
using clock = std::chrono::steady_clock;

// The number after "key": in a JSON line (-1 when it is not there).
double field(const std::string& line, const std::string& key) {
  const auto at = line.find("\"" + key + "\":");
  if (at == std::string::npos) return -1;
  return std::strtod(line.c_str() + at + key.size() + 3, nullptr);
}

bool is_event(const std::string& line, const std::string& name) {
  return line.find("\"event\":\"" + name + "\"") != std::string::npos;
}

std::vector<std::string> lines_of(const fs::path& p) {
  std::ifstream in(p);
  std::vector<std::string> out;
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// The pid of `launcher`'s child that runs local process `slot` (troupe node --slot K), or 0.
pid_t child_with_slot(pid_t launcher, int slot) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    std::ifstream stat(e.path() / "stat");
    std::string s;
    std::getline(stat, s);
    const auto close = s.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(s.substr(close + 2));
    char state = 0;
    long ppid = 0;
    rest >> state >> ppid;
    if (ppid != launcher) continue;
    std::ifstream cmd(e.path() / "cmdline", std::ios::binary);
    std::string args((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    std::vector<std::string> argv;
    for (size_t p = 0; p < args.size();) {
      const size_t z = args.find('\0', p);
      argv.push_back(args.substr(p, z - p));
      p = z == std::string::npos ? args.size() : z + 1;
    }
    for (size_t i = 0; i + 1 < argv.size(); ++i)
      if (argv[i] == "--slot" && argv[i + 1] == std::to_string(slot)) return pid_t(std::stol(name));
  }
  return 0;
}

struct run_result {
  std::string mode;
  bool finished = false;
  double final_loss = -1, seconds = 0, step_ms = 0;
  int64_t kill_step = -1;
  double detect_ms = -1, resume_ms = -1, kill_to_step_ms = -1;
  int64_t steps_lost = -1;
  double snapshot_ms = -1;  // median in-run snapshot on the step's path (runs that checkpoint)
  double copy_ms = -1;      // median in-run copy on the snapshot thread
  std::string log;
};

struct bench_job {
  fs::path dir;
  int steps = 600;
  uint64_t seed = 1337;
  bool pipeline = false;  // --pipeline: a GPT as 2 stages over 2 processes, not the 4-replica MLP
  int nproc() const { return pipeline ? 2 : 4; }
};

// Runs the job once under troupe launch; with kill_step >= 0, SIGKILLs local process
// `victim` once the metrics show that many steps done.
run_result run_once(const bench_job& job, const std::string& mode, int64_t kill_step, int victim, uint64_t seed) {
  run_result r;
  r.mode = mode;
  const fs::path run_dir = job.dir / (mode + "-" + std::to_string(seed) + (kill_step >= 0 ? "-kill" : ""));
  fs::remove_all(run_dir);
  fs::create_directories(run_dir);
  const fs::path metrics = run_dir / "metrics.jsonl", events = run_dir / "events.jsonl", spec = run_dir / "job.json";
  if (job.pipeline) {
    std::ofstream out(spec);
    out << "{\"name\":\"bench_recovery_pipeline\",\"model\":{\"gpt\":{\"n_layer\":4,\"n_head\":4,\"d_model\":64,"
           "\"context\":32}},\"data\":{\"dataset\":\"fortunes\"},\"optimizer\":{\"adamw\":{\"lr\":3e-3,\"beta1\":0.9,"
           "\"beta2\":0.95,\"weight_decay\":0.1},\"grad_clip\":1.0},\"train\":{\"batch_size\":16,\"steps\":"
        << job.steps << ",\"seed\":" << seed << ",\"threads\":2,\"sample_tokens\":0,\"metrics_file\":\""
        << metrics.string() << "\"},\"parallel\":{\"stages\":2,\"micro_batches\":4,\"transport\":\"tcp\"},"
        << "\"elastic\":{\"mode\":\"" << mode << "\"}}\n";
  } else {
    std::ofstream out(spec);
    out << "{\"name\":\"bench_recovery\",\"model\":{\"mlp\":{\"widths\":[784,256,128,64,10],\"activation\":\"relu\"}},"
           "\"data\":{\"dataset\":\"fashion_mnist\"},\"optimizer\":{\"adamw\":{\"lr\":2e-3,\"weight_decay\":0}},"
           "\"train\":{\"batch_size\":256,\"steps\":"
        << job.steps << ",\"seed\":" << seed << ",\"threads\":4,\"metrics_file\":\"" << metrics.string()
        << "\",\"checkpoint_dir\":\"" << (run_dir / "checkpoints").string() << "\",\"checkpoint_keep\":2"
        << (mode == "restart_all" ? ",\"checkpoint_every\":1" : "")
        << "},\"parallel\":{\"replicas\":4,\"transport\":\"tcp\"},\"elastic\":{\"mode\":\"" << mode
        << "\",\"min_workers\":2,\"restarts\":2}}\n";
  }
  r.log = (run_dir / "launch.log").string();
  std::vector<std::string> argv_s = {"troupe",         "launch",      "--nproc", std::to_string(job.nproc()),
                                     "--events",       events.string(), spec.string(), "--quiet"};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, r.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t launcher = 0;
  const auto t0 = clock::now();
  const int spawned = posix_spawn(&launcher, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (spawned != 0) throw std::runtime_error("bench recovery: cannot start troupe launch");
  double t_kill = -1;
  int status = 0;
  for (;;) {
    if (::waitpid(launcher, &status, WNOHANG) == launcher) break;
    if (kill_step >= 0 && t_kill < 0) {
      int64_t done = 0;
      for (const auto& l : lines_of(metrics))
        if (is_event(l, "step")) done = std::max<int64_t>(done, int64_t(field(l, "step")));
      if (done >= kill_step) {
        if (const pid_t p = child_with_slot(launcher, victim)) {
          t_kill = steady_now_s();
          ::kill(p, SIGKILL);
          r.kill_step = done;
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(500));
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (clock::now() - t0 > std::chrono::minutes(5)) {
      ::kill(launcher, SIGTERM);
      ::waitpid(launcher, &status, 0);
      break;
    }
  }
  r.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  // What the metrics and events say.
  std::vector<std::pair<double, int64_t>> steps;  // (t_mono, steps done) of every step line
  std::vector<double> snaps, copies;
  for (const auto& l : lines_of(metrics)) {
    // A leader's line for a step it took from a peer is no step trained after the failure.
    if (is_event(l, "step") && l.find("\"from_peer\"") == std::string::npos)
      steps.push_back({field(l, "t_mono"), int64_t(field(l, "step"))});
    if (is_event(l, "step") && field(l, "snapshot_ms") >= 0) snaps.push_back(field(l, "snapshot_ms"));
    if (is_event(l, "step") && field(l, "snapshot_copy_ms") >= 0) copies.push_back(field(l, "snapshot_copy_ms"));
    if (is_event(l, "eval")) r.final_loss = field(l, "loss");
  }
  int64_t most = 0;
  for (const auto& s : steps) most = std::max(most, s.second);
  r.finished = WIFEXITED(status) && WEXITSTATUS(status) == 0 && most == job.steps && r.final_loss >= 0;
  std::vector<double> gaps;
  for (size_t i = 1; i < steps.size(); ++i)
    if (steps[i].second == steps[i - 1].second + 1) gaps.push_back(1e3 * (steps[i].first - steps[i - 1].first));
  r.step_ms = median_of(gaps);
  if (!snaps.empty()) r.snapshot_ms = median_of(snaps);
  if (!copies.empty()) r.copy_ms = median_of(copies);
  if (t_kill < 0) return r;
  double t_detect = -1;
  for (const auto& l : lines_of(events))
    if ((is_event(l, "lost") || is_event(l, "failed")) && field(l, "t_mono") >= t_kill) {
      t_detect = field(l, "t_mono");
      break;
    }
  if (t_detect < 0) return r;
  r.detect_ms = 1e3 * (t_detect - t_kill);
  int64_t done_before = 0;
  for (const auto& s : steps)
    if (s.first < t_kill) done_before = std::max(done_before, s.second);
  for (const auto& s : steps)
    if (s.first > t_detect) {
      r.resume_ms = 1e3 * (s.first - t_detect);
      r.kill_to_step_ms = 1e3 * (s.first - t_kill);
      // The step in flight, and the completed ones done again.
      r.steps_lost = 1 + std::max<int64_t>(0, done_before - (s.second - 1));
      break;
    }
  return r;
}

// The in-memory snapshot after every step, in this process with one compute thread (the
// other core free, as on a machine with a core to spare per worker): steps with the
// pipelined snapshot (runtime/background_snapshot.hpp) against steps without, in
// alternating blocks, each step timed from drawing its batch to its update; and the copy
// alone, as it costs when it is made on the step's path.
struct snapshot_alone {
  double plain_ms = 0, with_ms = 0, overhead = 0, copy_ms = 0;
};

snapshot_alone measure_snapshot_alone(const proto::JobSpec& spec) {
  set_compute_threads(1);
  trainer t(spec, 1000000);
  batch_source source(spec, load_training_data(spec));
  background_snapshot snapshots;
  checkpoint_shard copy;  // one reused buffer: the in-memory snapshot, nothing persisted
  std::vector<double> plain, with, on_path;
  for (int block = 0; block < 16; ++block) {
    const bool snap = block % 2 == 1;
    for (int i = 0; i < 40; ++i) {
      const auto t0 = clock::now();
      batch b = source.next();
      t.compute_gradients(b.x, b.y);
      snapshots.settle();
      t.apply_gradients();
      if (snap) snapshots.start([&] { t.snapshot_into(copy); });
      const double ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
      if (block >= 2) (snap ? with : plain).push_back(ms);  // the first two blocks warm up
    }
  }
  snapshots.settle();
  for (int i = 0; i < 30; ++i) {
    const auto t0 = clock::now();
    t.snapshot_into(copy);
    on_path.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  }
  snapshot_alone r;
  r.plain_ms = median_of(plain);
  r.with_ms = median_of(with);
  r.overhead = r.plain_ms > 0 ? r.with_ms / r.plain_ms - 1 : 0;
  r.copy_ms = median_of(on_path);
  return r;
}

// --pipeline: the elastic pipeline (actors/elastic_pipeline.hpp). A GPT as 2 stages over
// 2 processes, each stage's state in its own memory and in the next process's standby copy; `kills` runs with a
// SIGKILL of a random process at a random step (seeded). Baselines in the same sitting:
// the same job with elastic.mode "off" (the step without snapshots or standby) and
// with "respawn" but no kill, whose final loss every run must equal exactly (the steps
// after the state the pipeline goes back to run again on the same data).
int bench_pipeline_recovery(bench_job& job, uint64_t seed, int kills, const std::string& json_path) {
  std::mt19937_64 rng(seed);
  std::printf("troupe bench recovery --pipeline: GPT 4 layers d_model 64 context 32 on fortunes as 2 pipeline stages "
              "over 2 processes (tcp, 1 compute thread each), batch 16, %d steps; %d runs, each with a SIGKILL of a "
              "random process at a random step (seed %llu)\n",
              job.steps, kills, (unsigned long long)seed);
  std::fflush(stdout);
  const run_result off = run_once(job, "off", -1, 0, 1337);
  const run_result base = run_once(job, "respawn", -1, 0, 1337);
  std::vector<run_result> runs;
  std::vector<int> victims;
  for (int k = 0; k < kills; ++k) {
    const int64_t at = job.steps / 5 + int64_t(rng() % uint64_t(job.steps * 3 / 5));
    victims.push_back(int(rng() % 2));
    runs.push_back(run_once(job, "respawn", at, victims.back(), 1337));
  }
  auto same = [&](const run_result& r) { return r.finished && r.final_loss == base.final_loss; };
  bool ok = off.finished && base.finished;
  std::printf("\n%-26s %9s %9s %10s %10s %11s %8s %10s %6s\n", "run", "step ms", "detect ms", "resume ms",
              "kill->step", "steps lost", "total s", "val loss", "check");
  std::printf("%-26s %9.2f %9s %10s %10s %11s %8.1f %10.4f %6s\n", "elastic off, no kill", off.step_ms, "-", "-", "-",
              "-", off.seconds, off.final_loss, off.finished ? "ok" : "FAIL");
  std::printf("%-26s %9.2f %9s %10s %10s %11s %8.1f %10.4f %6s\n", "respawn, no kill", base.step_ms, "-", "-", "-",
              "-", base.seconds, base.final_loss, base.finished ? "ok" : "FAIL");
  std::vector<double> detect, resume;
  int one = 0, two = 0;
  for (size_t k = 0; k < runs.size(); ++k) {
    const run_result& r = runs[k];
    const bool good = same(r) && r.resume_ms >= 0 && r.steps_lost == 1;
    ok = ok && good;
    detect.push_back(r.detect_ms);
    resume.push_back(r.resume_ms);
    one += r.steps_lost == 1;
    two += r.steps_lost == 2;
    std::printf("%-26s %9.2f %9.1f %10.1f %10.1f %11lld %8.1f %10.4f %6s\n",
                ("kill process " + std::to_string(victims[k]) + " after step " + std::to_string(r.kill_step)).c_str(),
                r.step_ms, r.detect_ms, r.resume_ms, r.kill_to_step_ms, (long long)r.steps_lost, r.seconds,
                r.final_loss, good ? "ok" : "FAIL");
  }
  const double overhead = off.step_ms > 0 ? base.step_ms / off.step_ms - 1 : 0;
  const double worst_resume = resume.empty() ? -1 : *std::max_element(resume.begin(), resume.end());
  std::printf("\nmedians over the kills: detection %.1f ms, first completed step %.1f ms after detection (worst %.1f ms); "
              "steps lost: 1 in %d runs, 2 in %d; every run's final loss equals the uninterrupted run's: %s\n",
              median_of(detect), median_of(resume), worst_resume, one, two, ok ? "yes" : "NO");
  std::printf("snapshots after every step and the standby copies: %+.1f%% on the step (%.2f ms against %.2f ms with "
              "elastic off)\n",
              100 * overhead, base.step_ms, off.step_ms);
  std::printf("bars: resume < 1 s after detection: %s (worst %.1f ms); <= 1 step lost: %d of %d runs\n",
              worst_resume >= 0 && worst_resume < 1000 ? "met" : "NOT met", worst_resume, one, kills);
  std::ostringstream json;
  json << "{\"bench\":\"recovery_pipeline\",\"steps\":" << job.steps << ",\"off_step_ms\":" << off.step_ms
       << ",\"respawn_step_ms\":" << base.step_ms << ",\"overhead\":" << overhead
       << ",\"final_loss\":" << base.final_loss << ",\"runs\":[";
  for (size_t k = 0; k < runs.size(); ++k)
    json << (k ? "," : "") << "{\"victim\":" << victims[k] << ",\"kill_step\":" << runs[k].kill_step
         << ",\"detect_ms\":" << runs[k].detect_ms << ",\"resume_ms\":" << runs[k].resume_ms
         << ",\"steps_lost\":" << runs[k].steps_lost << ",\"final_loss\":" << runs[k].final_loss
         << ",\"same\":" << (same(runs[k]) ? "true" : "false") << "}";
  json << "],\"ok\":" << (ok ? "true" : "false") << "}\n";
  if (!write_bench_json(json_path, json.str(), "bench recovery")) return 1;
  if (!ok) {
    std::fprintf(stderr, "troupe bench recovery: a run did not finish, lost more than the step in flight, or ended away from the "
                         "uninterrupted run's loss; logs in %s\n",
                 job.dir.c_str());
    return 1;
  }
  std::error_code ec;
  fs::remove_all(job.dir, ec);
  return 0;
}

}  // namespace

int bench_recovery_main(const std::vector<std::string>& args) {
  const char* usage = "usage: troupe bench recovery [--pipeline [--kills K]] [--steps N] [--seed S] [--json FILE]";
  bench_job job;
  uint64_t seed = 7;
  int kills = 6;
  std::string json_path;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--pipeline") {
      job.pipeline = true;
    } else if (args[i] == "--kills" && i + 1 < args.size()) {
      char* end = nullptr;
      const long v = std::strtol(args[++i].c_str(), &end, 10);
      if (*end || v < 1 || v > 100) {
        std::fprintf(stderr, "troupe bench recovery: --kills expects 1..100, got '%s' (%s)\n", args[i].c_str(), usage);
        return 2;
      }
      kills = int(v);
    } else if ((args[i] == "--steps" || args[i] == "--seed") && i + 1 < args.size()) {
      char* end = nullptr;
      const long v = std::strtol(args[++i].c_str(), &end, 10);
      if (*end || v < (args[i - 1] == "--steps" ? 40 : 0) || v > 100000) {
        std::fprintf(stderr, "troupe bench recovery: %s expects %s, got '%s' (%s)\n", args[i - 1].c_str(),
                     args[i - 1] == "--steps" ? "40..100000" : "0..100000", args[i].c_str(), usage);
        return 2;
      }
      if (args[i - 1] == "--steps")
        job.steps = int(v);
      else
        seed = uint64_t(v);
    } else if (args[i] == "--json" && i + 1 < args.size()) {
      json_path = args[++i];
    } else {
      std::fprintf(stderr, "troupe bench recovery: unknown flag '%s' (%s)\n", args[i].c_str(), usage);
      return 2;
    }
  }
  char tmpl[] = "/tmp/troupe-bench-recovery-XXXXXX";
  if (!::mkdtemp(tmpl)) {
    std::fprintf(stderr, "troupe bench recovery: cannot make a directory in /tmp\n");
    return 1;
  }
  job.dir = tmpl;
  if (json_path.empty()) json_path = job.pipeline ? "runs/bench_recovery_pipeline.json" : "runs/bench_recovery.json";
  if (job.pipeline) return bench_pipeline_recovery(job, seed, kills, json_path);
  std::mt19937_64 rng(seed);
  const int64_t kill_step = job.steps / 4 + int64_t(rng() % uint64_t(job.steps / 4));
  const int victim = int(rng() % 4);
  std::printf("troupe bench recovery: Fashion-MNIST MLP 784-256-128-64-10, 4 data-parallel processes (tcp), batch 256, "
              "%d steps; SIGKILL of local process %d after step %lld (seed %llu)\n",
              job.steps, victim, (long long)kill_step, (unsigned long long)seed);
  std::fflush(stdout);
  std::vector<run_result> base;
  for (uint64_t s : {1337, 1338, 1339}) base.push_back(run_once(job, "respawn", -1, 0, s));
  const run_result respawn = run_once(job, "respawn", kill_step, victim, 1337);
  const run_result restart = run_once(job, "restart_all", kill_step, victim, 1337);
  double lo = 1e9, hi = -1e9;
  std::vector<double> base_ms;
  bool ok = true;
  for (const auto& b : base) {
    ok = ok && b.finished;
    lo = std::min(lo, b.final_loss), hi = std::max(hi, b.final_loss);
    base_ms.push_back(b.step_ms);
  }
  const double spread = std::max(hi - lo, 0.02);
  auto within = [&](const run_result& r) { return r.finished && r.final_loss >= lo - spread && r.final_loss <= hi + spread; };
  proto::JobSpec spec = parse_job_spec(
      "{\"model\":{\"mlp\":{\"widths\":[784,256,128,64,10]}},\"data\":{\"dataset\":\"fashion_mnist\"},"
      "\"optimizer\":{\"adamw\":{\"lr\":2e-3}},\"train\":{\"batch_size\":64,\"steps\":100}}",
      "the snapshot job");
  const snapshot_alone alone = measure_snapshot_alone(spec);
  const double step = median_of(base_ms);
  // Inside the 4-worker run (restart_all snapshots after every step): what the snapshot
  // puts on the leader's step (the wait for the last copy before the update, and the
  // hand-over of the next), against the baselines' step: the number the bar is about.
  const double in_run = restart.snapshot_ms, in_run_overhead = step > 0 && in_run >= 0 ? in_run / step : -1;
  std::printf("\n%-22s %9s %9s %10s %10s %11s %8s %10s %6s\n", "run", "step ms", "detect ms", "resume ms",
              "kill->step", "steps lost", "total s", "test loss", "check");
  for (size_t i = 0; i < base.size(); ++i)
    std::printf("%-22s %9.2f %9s %10s %10s %11s %8.1f %10.4f %6s\n", ("baseline seed " + std::to_string(1337 + i)).c_str(),
                base[i].step_ms, "-", "-", "-", "-", base[i].seconds, base[i].final_loss, base[i].finished ? "ok" : "FAIL");
  for (const run_result* r : {&respawn, &restart})
    std::printf("%-22s %9.2f %9.1f %10.1f %10.1f %11lld %8.1f %10.4f %6s\n", r->mode.c_str(), r->step_ms, r->detect_ms,
                r->resume_ms, r->kill_to_step_ms, (long long)r->steps_lost, r->seconds, r->final_loss,
                within(*r) ? "ok" : "FAIL");
  const double speedup = respawn.kill_to_step_ms > 0 ? restart.kill_to_step_ms / respawn.kill_to_step_ms : 0;
  const bool measured = respawn.resume_ms >= 0 && restart.resume_ms >= 0;
  ok = ok && within(respawn) && within(restart) && measured;
  std::printf("\nin-memory snapshot after every step (a copy of parameters and AdamW state, made on a thread of its "
              "own during the next step's forward and backward):\n"
              "  inside the 4-worker run (restart_all's leader, medians): %.3f ms on the step's path, %.2f%% of the %.2f "
              "ms baseline step; the copy itself %.3f ms on the snapshot thread\n"
              "  alone in this process (1 compute thread): step %.3f ms without, %.3f ms with a snapshot after every "
              "step (%+.2f%%); the same copy made on the step's path %.3f ms (%.2f%%)\n",
              in_run, 100 * in_run_overhead, step, restart.copy_ms, alone.plain_ms, alone.with_ms, 100 * alone.overhead,
              alone.copy_ms, alone.plain_ms > 0 ? 100 * alone.copy_ms / alone.plain_ms : 0.0);
  std::printf("bars: resume < 1 s after detection: %s (%.1f ms); <= 1 step lost: %s (%lld); >= 5x faster than "
              "restart_all, kill to next step: %s (%.1fx); snapshot every step <= 3.5%% of a step: %s (on the "
              "leader's path in the run %.2f%%, on the step alone %+.2f%%)\n",
              respawn.resume_ms >= 0 && respawn.resume_ms < 1000 ? "met" : "NOT met", respawn.resume_ms,
              respawn.steps_lost >= 0 && respawn.steps_lost <= 1 ? "met" : "NOT met", (long long)respawn.steps_lost,
              speedup >= 5 ? "met" : "NOT met", speedup,
              in_run_overhead >= 0 && in_run_overhead <= 0.035 && alone.overhead <= 0.035 ? "met" : "NOT met",
              100 * in_run_overhead, 100 * alone.overhead);
  std::ostringstream json;
  json << "{\"bench\":\"recovery\",\"steps\":" << job.steps << ",\"kill_step\":" << kill_step << ",\"victim\":" << victim
       << ",\"baseline_losses\":[";
  for (size_t i = 0; i < base.size(); ++i) json << (i ? "," : "") << base[i].final_loss;
  json << "],\"baseline_step_ms\":" << step << ",\"runs\":[";
  bool first = true;
  for (const run_result* r : {&respawn, &restart}) {
    json << (first ? "" : ",") << "{\"mode\":\"" << r->mode << "\",\"detect_ms\":" << r->detect_ms
         << ",\"resume_ms\":" << r->resume_ms << ",\"kill_to_step_ms\":" << r->kill_to_step_ms
         << ",\"steps_lost\":" << r->steps_lost << ",\"seconds\":" << r->seconds << ",\"final_loss\":" << r->final_loss
         << ",\"ok\":" << (within(*r) ? "true" : "false") << "}";
    first = false;
  }
  json << "],\"speedup\":" << speedup << ",\"snapshot_ms_in_run\":" << in_run
       << ",\"snapshot_overhead_in_run\":" << in_run_overhead << ",\"snapshot_copy_ms_in_run\":" << restart.copy_ms
       << ",\"alone_step_ms\":" << alone.plain_ms << ",\"alone_step_ms_with_snapshots\":" << alone.with_ms
       << ",\"snapshot_overhead_alone\":" << alone.overhead << ",\"snapshot_copy_ms_on_path\":" << alone.copy_ms
       << ",\"ok\":" << (ok ? "true" : "false") << "}\n";
  if (!write_bench_json(json_path, json.str(), "bench recovery")) return 1;
  if (!ok) {
    std::fprintf(stderr, "troupe bench recovery: a run did not finish, or ended outside the baselines' spread; logs in %s\n",
                 job.dir.c_str());
    return 1;
  }
  std::error_code ec;
  fs::remove_all(job.dir, ec);
  return 0;
}

}  // namespace troupe
