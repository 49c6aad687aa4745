// troupe: the command line. `troupe train JOB.json` runs a job through the actor system;
// `troupe bench train` measures training throughput.
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "actors/run_job.hpp"
#include "apps/bench.hpp"
#include "apps/experiment.hpp"
#include "apps/launch.hpp"
#include "apps/plan.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"

namespace {

int usage(const char* why) {
  if (why) std::fprintf(stderr, "troupe: %s\n\n", why);
  std::fprintf(stderr,
               "usage:\n"
               "  troupe train JOB.json [--steps N] [--threads N] [--quiet] [--resume CHECKPOINT_DIR]\n"
               "      run a training job (see docs/job-spec.md); flags override the spec\n"
               "  troupe launch --nproc N [--nodes M --listen HOST:PORT] [--events FILE] JOB.json [--steps N] [--threads N]\n"
               "      the job as N processes on this host (replicas split over them, tcp between them),\n"
               "      and M more from other machines that run troupe node; elastic.mode in the spec says\n"
               "      what a lost process costs (docs/fault-tolerance.md), --events logs losses and views\n"
               "  troupe node --coordinator HOST:PORT\n"
               "      join a job launched elsewhere with --nodes (TROUPE_SECRET: the job's secret)\n"
               "  troupe selftest [--nproc N]\n"
               "      every collective checked across N processes over tcp\n"
               "  troupe plan JOB.json\n"
               "      print how the job is cut into pipeline stages and the memory each needs\n"
               "  troupe bench train [--model mlp|gpt] [--steps N] [--rounds N] [--torch] [--json FILE]\n"
               "      samples/s (MLP) and tokens/s (GPT) of the example jobs at 1 and 2 threads;\n"
               "      --torch also runs PyTorch (/usr/bin/python3) on the same models\n"
               "  troupe bench pipeline [--fwd-ms F] [--bwd-ms B] [--wgt-ms W] [--steps N] [--json FILE]\n"
               "      each pipeline schedule on emulated stages: measured bubble and stash vs formula\n"
               "  troupe bench actors [--round-trips N] [--json FILE]\n"
               "      tensor-message round trips between two actors next to raw CAF messages\n"
               "  troupe bench parallel [--model mlp|gpt] [--steps N] [--rounds N] [--no-torch] [--json FILE]\n"
               "      2 workers: replicas and pipeline stages against PyTorch DDP and a PyTorch pipeline\n"
               "  troupe experiment stragglers [--policies LIST] [--profiles LIST] [--epochs N] [--sample-ms MS]\n"
               "      every parameter-shard policy under straggler profiles (emulated compute): table, plots, JSON\n"
               "  troupe experiment diloco [--workers LIST] [--sync-every LIST] [--steps N] [--batch B] [--no-sync]\n"
               "      the fortunes GPT by DiLoCo at each H and by sync: validation loss against tokens and bytes\n"
               "  troupe bench allreduce [--ranks N[,N...]] [--max-bytes B] [--transports LIST] [--json FILE]\n"
               "      all-reduce per transport (inproc threads, its copying baseline, tcp processes), nccl-tests columns\n"
               "  troupe bench checkpoint [--steps N] [--json FILE]\n"
               "      what a checkpoint costs the example jobs: snapshot and persist against the step\n"
               "  troupe bench recovery [--pipeline [--kills K]] [--steps N] [--seed S] [--json FILE]\n"
               "      SIGKILL of one of 4 data-parallel workers: respawn against restart-all, detection and resume times;\n"
               "      --pipeline: SIGKILLs of a 2-stage pipeline's processes, each respawned with its stage's state\n");
  return 2;
}

// Parses a positive integer flag value or explains what was wrong.
bool parse_count(const char* flag, const char* text, uint32_t& out) {
  char* end = nullptr;
  long v = std::strtol(text, &end, 10);
  if (!*text || *end || v < 1 || v > 100000000) {
    std::fprintf(stderr, "troupe: %s expects a positive integer, got '%s'\n", flag, text);
    return false;
  }
  out = uint32_t(v);
  return true;
}

// This process's place in a multi-process job: flags (troupe launch passes them), else
// the environment of a launcher: TROUPE_RANK / TROUPE_WORLD_SIZE, Slurm's SLURM_PROCID /
// SLURM_NTASKS, Open MPI's OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE; the rendezvous
// directory from TROUPE_RENDEZVOUS, the job's group id from TROUPE_GROUP, the address this
// process listens on from TROUPE_HOST (default 127.0.0.1), the secret from TROUPE_SECRET.
bool place_from_env(troupe::coordinator_options& o, bool rank_set, bool world_set) {
  auto env = [](const char* k) { return std::getenv(k); };
  const char* pairs[][2] = {{"TROUPE_RANK", "TROUPE_WORLD_SIZE"},
                            {"SLURM_PROCID", "SLURM_NTASKS"},
                            {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}};
  for (auto& [rk, wk] : pairs) {
    if (!env(rk) || !env(wk)) continue;
    uint32_t world = 0;
    char* end = nullptr;
    long rank = std::strtol(env(rk), &end, 10);
    if (*end || rank < 0 || !parse_count(wk, env(wk), world) || rank >= long(world)) {
      std::fprintf(stderr, "troupe: %s=%s and %s=%s do not name a rank of a world\n", rk, env(rk), wk, env(wk));
      return false;
    }
    if (!rank_set) o.rank = int(rank);
    if (!world_set) o.world = int(world);
    break;
  }
  if (o.rendezvous.empty() && env("TROUPE_RENDEZVOUS")) o.rendezvous = env("TROUPE_RENDEZVOUS");
  if (env("TROUPE_HOST")) o.host = env("TROUPE_HOST");
  if (o.group == 0 && env("TROUPE_GROUP")) o.group = std::strtoull(env("TROUPE_GROUP"), nullptr, 10);
  return true;
}

// The end of a run as troupe train prints it: the evaluation, then the text sample (GPT).
void print_result(const troupe::job_outcome& out) {
  if (out.eval.accuracy >= 0)
    std::printf("result: test loss %.4f, test accuracy %.4f on %lld images (%.1f s)\n", out.eval.loss,
                out.eval.accuracy, (long long)out.eval.count, out.seconds);
  else
    std::printf("result: validation loss %.4f on %lld windows (%.1f s)\n", out.eval.loss, (long long)out.eval.count,
                out.seconds);
}

void print_sample(const troupe::job_outcome& out) {
  if (!out.sample.empty()) std::printf("sample:\n----\n%s\n----\n", out.sample.c_str());
}

int train(const std::vector<std::string>& args) {
  std::string path, resume;
  uint32_t steps = 0, threads = 0;
  bool quiet = false, resume_latest = false;
  troupe::coordinator_options place;
  bool rank_set = false, world_set = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if ((a == "--steps" || a == "--threads") && i + 1 < args.size()) {
      if (!parse_count(a.c_str(), args[++i].c_str(), a == "--steps" ? steps : threads)) return 2;
    } else if (a == "--rank" && i + 1 < args.size()) {
      char* end = nullptr;
      long r = std::strtol(args[++i].c_str(), &end, 10);
      if (args[i].empty() || *end || r < 0 || r > 4095) {
        std::fprintf(stderr, "troupe: --rank expects 0..4095, got '%s'\n", args[i].c_str());
        return 2;
      }
      place.rank = int(r), rank_set = true;
    } else if (a == "--world" && i + 1 < args.size()) {
      uint32_t w = 0;
      if (!parse_count("--world", args[++i].c_str(), w) || w > 4096) return 2;
      place.world = int(w), world_set = true;
    } else if (a == "--rendezvous" && i + 1 < args.size()) {
      place.rendezvous = args[++i];
    } else if (a == "--group" && i + 1 < args.size()) {
      place.group = std::strtoull(args[++i].c_str(), nullptr, 10);
    } else if (a == "--resume" && i + 1 < args.size()) {
      resume = args[++i];
    } else if (a == "--store-served") {  // troupe launch serves the tcp:// store, not rank 0
      place.serve_store = false;
    } else if (a == "--elastic-join") {  // troupe launch: this process replaces a lost one
      place.elastic_join = true;
    } else if (a == "--resume-latest") {  // troupe launch, restarting a job: its newest checkpoint, if any
      resume_latest = true;
    } else if (a == "--quiet") {
      quiet = true;
    } else if (a.rfind("--", 0) == 0) {
      return usage(("unknown or incomplete flag '" + a + "'").c_str());
    } else if (path.empty()) {
      path = a;
    } else {
      return usage("train takes one job file");
    }
  }
  if (path.empty()) return usage("train needs a job file");
  if (!place_from_env(place, rank_set, world_set)) return 2;
  if (place.rank >= place.world && !place.elastic_join) {
    std::fprintf(stderr, "troupe: --rank %d is not below --world %d\n", place.rank, place.world);
    return 2;
  }
  if (place.world > 1 && place.rendezvous.empty()) {
    std::fprintf(stderr, "troupe: a job of %d processes needs a rendezvous: a directory all of them see, or "
                         "tcp://HOST:PORT where rank 0 serves one (--rendezvous or TROUPE_RENDEZVOUS); troupe "
                         "launch makes one\n", place.world);
    return 2;
  }
  const bool reporter = place.rank == 0;  // the other processes of a job train quietly
  if (const char* launcher = std::getenv("TROUPE_LAUNCHER_PID")) {
    // Started by troupe launch: die with it (and not outlive it if it is already gone).
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (std::to_string(::getppid()) != launcher) return 1;
  }
  try {
    troupe::proto::JobSpec spec = troupe::load_job_spec(path);
    if (steps) {
      spec.mutable_train()->clear_epochs();
      spec.mutable_train()->set_steps(steps);
    }
    if (threads) {
      if (threads > 256) {
        std::fprintf(stderr, "troupe: --threads expects 1..256, got %u\n", threads);
        return 2;
      }
      spec.mutable_train()->set_threads(threads);
    }
    if (steps && spec.optimizer().warmup_steps() >= steps) {
      std::fprintf(stderr, "troupe: --steps %u is not more than optimizer.warmup_steps (%u) of %s\n", steps,
                   spec.optimizer().warmup_steps(), path.c_str());
      return 2;
    }
    int nthreads = spec.train().threads() ? int(spec.train().threads()) : troupe::hardware_threads();
    troupe::coordinator_options opts = place;
    if (resume_latest && resume.empty()) {
      // A restart of the whole job (elastic.mode "restart_all"): from its newest checkpoint
      // that reads cleanly, or from the start while it has none.
      auto v = std::make_shared<troupe::checkpoint_version>(
          troupe::load_latest_checkpoint(spec.train().checkpoint_dir()));
      for (const auto& why : v->skipped)
        if (reporter) std::fprintf(stderr, "troupe: skipped a checkpoint: %s\n", why.c_str());
      if (v->step >= 0) {
        if (reporter)
          std::printf("resume: from %s, after step %lld\n", v->dir.string().c_str(), static_cast<long long>(v->step));
        opts.resume_from = v;
      }
    }
    if (!resume.empty()) {
      // A version directory (it has a MANIFEST), or a checkpoint directory: its newest
      // version that reads cleanly, the ones passed over named with why.
      namespace fs = std::filesystem;
      auto v = std::make_shared<troupe::checkpoint_version>();
      if (fs::exists(fs::path(resume) / "MANIFEST")) {
        *v = troupe::load_checkpoint_version(resume);
      } else {
        if (!fs::is_directory(resume))
          throw troupe::input_error("--resume " + resume + ": no such checkpoint directory");
        *v = troupe::load_latest_checkpoint(resume);
        for (const auto& why : v->skipped) std::fprintf(stderr, "troupe: skipped a checkpoint: %s\n", why.c_str());
        if (v->step < 0)
          throw troupe::input_error("--resume " + resume + ": no checkpoint in it reads cleanly" +
                                    (v->skipped.empty() ? std::string(" (it holds none)") : " (reasons above)"));
      }
      if (reporter)
        std::printf("resume: from %s, after step %lld\n", v->dir.string().c_str(), static_cast<long long>(v->step));
      opts.resume_from = v;
    }
    opts.quiet = quiet || !reporter;
    opts.live_progress = isatty(STDOUT_FILENO);
    if (spec.elastic().mode() != "off" && spec.policy().name() == "allreduce") {
      // Whichever process leads the last view reports (the first one may be lost).
      opts.quiet = quiet;
      if (reporter && !place.elastic_join)
        std::printf("troupe: %s\n        %d processes, %s, elastic.mode %s\n", troupe::describe(spec).c_str(), place.world,
                    spec.parallel().stages() > 1 ? "each keeping its place in the pipeline" : "one replica each",
                    spec.elastic().mode().c_str());
      auto out = troupe::run_job(spec, opts);
      if (out.eval.loss >= 0 && !quiet) {
        print_result(out);
        print_sample(out);
      }
      return 0;
    }
    if (!reporter) {
      troupe::run_job(spec, opts);
      return 0;
    }
    std::printf("troupe: %s\n", troupe::describe(spec).c_str());
    if (place.world > 1)
      std::printf("        %d processes share the %s (placement below); tensors between them over %s\n", place.world,
                  spec.policy().name() != "allreduce"
                      ? (std::to_string(spec.policy().workers()) + " workers and " +
                         std::to_string(spec.policy().shards()) + " parameter shards")
                            .c_str()
                      : (std::to_string(spec.parallel().replicas()) + " replicas x " +
                         std::to_string(spec.parallel().stages()) + " stages")
                            .c_str(),
                  spec.parallel().transport() == "shm" ? "shared memory (tcp between hosts)"
                                                       : spec.parallel().transport().c_str());
    std::vector<troupe::stage_plan> plan;
    if (spec.policy().name() != "allreduce") {
      const auto& pol = spec.policy();
      char emulated[64];
      std::snprintf(emulated, sizeof emulated, ", compute emulated at %.3g ms/example", pol.sample_ms());
      const std::string pushes = pol.has_sync_every()
                                     ? "push their change every " + std::to_string(pol.sync_every()) + " local steps"
                                     : std::string("push gradients");
      std::printf("        policy %s: %u workers (batch %u each) pull from %u parameter shard%s and %s%s\n",
                  pol.name().c_str(), pol.workers(), spec.train().batch_size() / pol.workers(), pol.shards(),
                  pol.shards() == 1 ? "" : "s", pushes.c_str(), pol.sample_ms() > 0 ? emulated : "");
    } else if (spec.parallel().stages() > 1 || spec.parallel().replicas() > 1) {
      plan = troupe::plan_job(spec);
      std::printf("%s", troupe::format_plan(spec, plan).c_str());
    }
    else
      std::printf("        %d compute thread%s, data feeder -> device (1 stage, 1 replica)\n", nthreads,
                  nthreads == 1 ? "" : "s");
    auto out = troupe::run_job(spec, opts);
    print_result(out);
    for (size_t s = 0; s < out.peak_stash_mb.size() && s < plan.size(); ++s)
      if (out.peak_stash_mb[s] >= 0)
        std::printf("%s stage %zu: peak activations %.2f MB planned, %.2f MB measured\n", s ? "           " : "memory:    ",
                    s, plan[s].peak_activation_mb, out.peak_stash_mb[s]);
      else
        std::printf("%s stage %zu: peak activations %.2f MB planned (runs in another process)\n",
                    s ? "           " : "memory:    ", s, plan[s].peak_activation_mb);
    if (!out.trace_path.empty())
      std::printf("trace:      %s (Chrome trace format: open it in Perfetto)\ntimeline:   %s\n", out.trace_path.c_str(),
                  out.timeline_path.c_str());
    print_sample(out);
    return 0;
  } catch (const troupe::input_error& e) {
    std::fprintf(stderr, "troupe: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe: failed: %s\n", e.what());
    return 1;
  }
}

}  // namespace

int troupe::train_main(const std::vector<std::string>& args) { return train(args); }

int main(int argc, char** argv) {
  troupe::use_fast_blas(argv);
  if (argc < 2) return usage(nullptr);
  std::string cmd = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "train") return train(args);
  if (cmd == "launch") return troupe::launch_main(args);
  if (cmd == "node") return troupe::node_main(args);
  if (cmd == "selftest") return troupe::selftest_main(args);
  if (cmd == "bench") return troupe::bench_main(args);
  if (cmd == "plan") return troupe::plan_main(args);
  if (cmd == "experiment") return troupe::experiment_main(args);
  if (cmd == "-h" || cmd == "--help" || cmd == "help") return usage(nullptr), 0;
  return usage(("unknown command '" + cmd + "'").c_str());
}
