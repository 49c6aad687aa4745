// troupe launch --nproc N JOB.json [train flags]: runs one job as N processes on this host
// (as torchrun does), or, with --nodes M --listen HOST:PORT, as N here plus M that join from
// other machines (`troupe node --coordinator HOST:PORT`, TROUPE_SECRET the same on each).
// The launcher publishes a cluster_coordinator (actors/cluster_coordinator.hpp) over CAF
// and starts N processes that each run a node agent (`troupe node --slot K`); every agent
// proves the job's secret, gets its rank, and is asked to spawn that rank's part of the
// job; rank 0 prints and writes everything. The data links meet through a fresh
// rendezvous directory, or, with nodes, a tcp store the launcher serves. If one process
// fails, or its agent goes silent or away, the others are stopped (the agents are told;
// local ones get SIGTERM, then SIGKILL after 5 s) and launch exits with the failed one's
// status, naming it. The children die with the launcher.
#include "apps/launch.hpp"

#include <caf/io/all.hpp>  // the middleman: the coordinator is published for the agents

#include "actors/cluster_coordinator.hpp"
#include "actors/ps_job.hpp"  // check_ps_respawn: what a parameter-shard job in respawn mode needs
#include "actors/run_job.hpp"  // split_processes: which view sizes a pipeline fits
#include "apps/cluster.hpp"
#include "policies/process_placement.hpp"
#include "runtime/check.hpp"
#include "runtime/job_spec.hpp"
#include "transport/tcp/store.hpp"
#include "transport/tcp/tcp.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <thread>
#include <vector>

extern char** environ;

namespace troupe {

namespace {

volatile sig_atomic_t interrupted = 0;
void on_signal(int) { interrupted = 1; }

void stop_all(const std::vector<pid_t>& pids, const std::vector<bool>& running) {
  for (size_t k = 0; k < pids.size(); ++k)
    if (running[k]) {
      ::kill(pids[k], SIGTERM);
      ::kill(pids[k], SIGCONT);  // a stopped process acts on its SIGTERM only once it runs
    }
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (size_t k = 0; k < pids.size(); ++k) {
    if (!running[k]) continue;
    int status = 0;
    while (::waitpid(pids[k], &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() >= until) {
        ::kill(pids[k], SIGKILL);
        ::waitpid(pids[k], &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
}

}  // namespace

int launch_main(const std::vector<std::string>& args) {
  const char* usage =
      "usage: troupe launch --nproc N [--nodes M --listen HOST:PORT] [--tls | --tls-cert F --tls-key K --tls-ca CA] "
      "[--events FILE] JOB.json [--steps N] [--threads N] [--quiet]";
  int nproc = 0, nodes = 0;
  std::string listen, events;
  control_tls tls;
  std::vector<std::string> passed;  // to every `troupe train`
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--nproc" && i + 1 < args.size()) {
      char* end = nullptr;
      long v = std::strtol(args[++i].c_str(), &end, 10);
      if (args[i].empty() || *end || v < 1 || v > 256) {
        std::fprintf(stderr, "troupe launch: --nproc expects 1..256, got '%s' (%s)\n", args[i].c_str(), usage);
        return 2;
      }
      nproc = int(v);
    } else if (args[i] == "--nodes" && i + 1 < args.size()) {
      char* end = nullptr;
      long v = std::strtol(args[++i].c_str(), &end, 10);
      if (args[i].empty() || *end || v < 0 || v > 4096) {
        std::fprintf(stderr, "troupe launch: --nodes expects 0..4096, got '%s' (%s)\n", args[i].c_str(), usage);
        return 2;
      }
      nodes = int(v);
    } else if (args[i] == "--listen" && i + 1 < args.size()) {
      listen = args[++i];
    } else if (args[i] == "--events" && i + 1 < args.size()) {
      events = args[++i];
    } else if (args[i].rfind("--tls", 0) == 0) {
      try {
        if (!take_tls_flag(args, i, tls)) throw input_error("unknown flag '" + args[i] + "'");
      } catch (const std::exception& e) {
        std::fprintf(stderr, "troupe launch: %s (%s)\n", e.what(), usage);
        return 2;
      }
    } else if (args[i] == "--rank" || args[i] == "--world" || args[i] == "--rendezvous" || args[i] == "--group") {
      std::fprintf(stderr, "troupe launch: %s is set by launch itself (%s)\n", args[i].c_str(), usage);
      return 2;
    } else {
      passed.push_back(args[i]);
    }
  }
  if (nproc == 0) {
    std::fprintf(stderr, "troupe launch: --nproc N is required (%s)\n", usage);
    return 2;
  }
  std::string listen_host;
  uint16_t listen_port = 0;
  if (nodes > 0) {
    if (listen.empty()) {
      std::fprintf(stderr, "troupe launch: --nodes needs --listen HOST:PORT, the address nodes reach (%s)\n", usage);
      return 2;
    }
    const char* secret = std::getenv("TROUPE_SECRET");
    if (!secret || std::strlen(secret) < 32) {
      std::fprintf(stderr, "troupe launch: with --nodes, set TROUPE_SECRET to the job's secret here and on every node, "
                           "at least 32 characters (e.g. 32 random bytes as hex)\n");
      return 2;
    }
    try {
      std::tie(listen_host, listen_port) = parse_store_address("tcp://" + listen);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe launch: --listen: %s\n", e.what());
      return 2;
    }
    if (listen_host == "0.0.0.0" || listen_host == "::") {
      std::fprintf(stderr, "troupe launch: --listen needs this machine's address that the nodes reach, not %s\n",
                   listen_host.c_str());
      return 2;
    }
    // Nodes are started by hand: give them minutes to join, not the default 30 s.
    if (!std::getenv("TROUPE_CONNECT_MS")) ::setenv("TROUPE_CONNECT_MS", "600000", 1);
  }
  std::string job_file;  // the first argument that is not a flag's value
  for (size_t i = 0; i < passed.size(); ++i) {
    if (passed[i] == "--steps" || passed[i] == "--threads" || passed[i] == "--resume") {
      ++i;
      continue;
    }
    if (passed[i].rfind("--", 0) != 0) {
      job_file = passed[i];
      break;
    }
  }
  std::string spec_text;
  {
    std::ifstream in(job_file);
    std::stringstream text;
    text << in.rdbuf();
    if (job_file.empty() || !in) {
      std::fprintf(stderr, "troupe launch: cannot read the job file '%s' (%s)\n", job_file.c_str(), usage);
      return 2;
    }
    spec_text = text.str();
  }
  // Where each process runs (parallel.hosts); a bad job file is reported here, once.
  process_placement placement;
  proto::ElasticSpec elastic;
  int spec_stages = 1, spec_replicas = 1;
  bool policy_job = false;
  try {
    const proto::JobSpec spec = load_job_spec(job_file);
    elastic = spec.elastic();
    spec_stages = int(spec.parallel().stages());
    spec_replicas = int(spec.parallel().replicas());
    if (elastic.mode() == "restart_all" && nodes > 0)
      throw input_error("elastic.mode \"restart_all\" restarts the processes this launcher starts: it takes no --nodes "
                        "(use \"respawn\", where the others go on)");
    if (elastic.mode() != "off" && spec.policy().name() != "allreduce") {
      // A parameter-shard job (the synchronous rule, the spec's check): restart_all, or
      // respawn, where a lost process's shards move to their standby copies in the
      // processes left (actors/ps_job.hpp) and no replacement process is started.
      policy_job = true;
      if (elastic.mode() == "respawn") check_ps_respawn(spec, nproc + nodes);
    } else if (elastic.mode() != "off" && spec_stages > 1) {
      // Each process keeps its place (its stages of its replicas); a lost one is replaced,
      // or with elastic.respawn false the pipeline is cut anew over those left.
    } else if (elastic.mode() != "off") {
      const int world = nproc + nodes;
      if (int(spec.parallel().replicas()) != world)
        throw input_error("elastic.mode \"" + elastic.mode() + "\": each process holds one replica: expected " +
                          "parallel.replicas " + std::to_string(world) + " (--nproc + --nodes), got " +
                          std::to_string(spec.parallel().replicas()));
      if (int(elastic.min_workers()) > world)
        throw input_error("elastic.min_workers " + std::to_string(elastic.min_workers()) + " is more than the " +
                          std::to_string(world) + " processes launched");
    }
    if (elastic.mode() != "off") {
      namespace fs = std::filesystem;
      std::error_code ec;
      // Every version in the directory is taken for this run's (a restart, or a pipeline
      // whose stages are lost with their standby, goes back to the newest).
      if ((elastic.mode() == "restart_all" || (spec_stages > 1 && spec.train().checkpoint_every() > 0)) &&
          fs::is_directory(spec.train().checkpoint_dir(), ec))
        for (const auto& e : fs::directory_iterator(spec.train().checkpoint_dir(), ec))
          if (e.path().filename().string().rfind("step-", 0) == 0)
            throw input_error("elastic.mode \"" + elastic.mode() + "\": train.checkpoint_dir " + spec.train().checkpoint_dir() +
                              " holds checkpoints already (" + e.path().filename().string() +
                              "), which a restart would take for this run's: remove them, or pick another directory");
    }
    const std::vector<std::string> hosts(spec.parallel().hosts().begin(), spec.parallel().hosts().end());
    placement = place_processes(hosts, nproc, nodes, nodes > 0 ? listen_host : "127.0.0.1");
  } catch (const input_error& e) {
    std::fprintf(stderr, "troupe launch: error: %s\n", e.what());
    return 1;
  }
  std::chrono::milliseconds silence, joining;
  try {
    silence = control_silence();
    joining = join_deadline();
    check_tls(tls);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe launch: %s\n", e.what());
    return 2;
  }
  char dir_template[] = "/tmp/troupe-launch-XXXXXX";
  if (!::mkdtemp(dir_template)) {
    std::fprintf(stderr, "troupe launch: cannot make a rendezvous directory in /tmp\n");
    return 1;
  }
  const std::string dir = dir_template;
  const uint64_t group = (uint64_t(::getpid()) << 16) ^ uint64_t(std::chrono::steady_clock::now().time_since_epoch().count() & 0xFFFF);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::setenv("TROUPE_LAUNCHER_PID", std::to_string(::getpid()).c_str(), 1);
  // The job's secret, for the processes' links to prove to each other (never on a command
  // line, where other users could read it); one given in the environment is kept.
  if (!std::getenv("TROUPE_SECRET") || !*std::getenv("TROUPE_SECRET"))
    ::setenv("TROUPE_SECRET", make_job_secret().c_str(), 1);
  const std::string secret = std::getenv("TROUPE_SECRET");
  // With nodes on other machines the rendezvous store is served here, by the launcher (the
  // one process that lives as long as the job), on a port of its own.
  std::unique_ptr<tcp_store_server> store;
  std::string rendezvous = dir;
  std::vector<std::string> flags;
  for (const auto& a : passed)
    if (a != job_file) flags.push_back(a);
  if (nodes > 0) {
    try {
      store = std::make_unique<tcp_store_server>(listen_host, 0, secret);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe launch: cannot serve the rendezvous store on %s: %s\n", listen_host.c_str(), e.what());
      return 1;
    }
    rendezvous = "tcp://" + listen_host + ":" + std::to_string(store->port());
    flags.push_back("--store-served");
    ::setenv("TROUPE_HOST", listen_host.c_str(), 1);  // the local processes listen there too
  }
  // One attempt of the job. Without elastic.mode "restart_all" there is only the first;
  // with it, a failed attempt is followed by another from the newest checkpoint, up to
  // elastic.restarts times (torchrun's way, for comparison with "respawn").
  auto record = [&](const std::string& fields) { append_event(events, fields); };
  const bool respawning = elastic.mode() == "respawn";
  int code = 0;
  for (uint32_t attempt = 0;; ++attempt) {
    caf::actor_system_config cfg;
    configure_control_plane(cfg, silence, tls);
    caf::actor_system sys{cfg};
    caf::scoped_actor self{sys};
    cluster_options co;
    co.secret = secret;
    co.local = nproc;
    co.remote = nodes;
    co.job.spec = spec_text;
    co.job.path = std::filesystem::absolute(job_file).string();
    co.job.flags = flags;
    if (attempt > 0) {  // from the newest checkpoint now, not from one the first attempt was given
      co.job.flags.clear();
      for (size_t i = 0; i < flags.size(); ++i) {
        if (flags[i] == "--resume" && i + 1 < flags.size()) {
          ++i;
          continue;
        }
        co.job.flags.push_back(flags[i]);
      }
      co.job.flags.push_back("--resume-latest");
    }
    co.job.rendezvous = attempt == 0 || nodes > 0 ? rendezvous : dir + "/attempt-" + std::to_string(attempt);
    co.job.group = group + (uint64_t(attempt) << 40);
    co.join_deadline = joining;
    co.placement = placement;
    co.launcher = self;
    co.events = events;
    co.elastic = respawning;
    co.min_workers = elastic.min_workers();
    co.fixed_places = spec_stages > 1;
    co.shrink_places = spec_stages > 1 && !elastic.respawn();
    if (co.shrink_places)
      co.view_fits = [replicas = spec_replicas, stages = spec_stages](size_t n) {
        try {
          split_processes(int(n), replicas, stages);
          return true;
        } catch (const input_error&) {
          return false;
        }
      };
    co.max_workers = elastic.max_workers();
    try {
      if (nodes > 0)
        co.store = std::make_shared<tcp_rendezvous>(listen_host, store->port(), secret);
      else
        co.store = std::make_shared<file_rendezvous>(co.job.rendezvous);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "troupe launch: cannot open the job's rendezvous: %s\n", e.what());
      return 1;
    }
    auto coordinator = sys.spawn(cluster_coordinator, co);
    self->monitor(coordinator);  // a coordinator that fails ends the job, never a wait
    const std::string at_host = nodes > 0 ? listen_host : "127.0.0.1";
    auto published = publish_control(sys, coordinator, at_host, nodes > 0 ? listen_port : 0, tls);
    if (!published) {
      std::fprintf(stderr, "troupe launch: cannot listen for the job's processes on %s:%u: %s\n", at_host.c_str(),
                   unsigned(nodes > 0 ? listen_port : 0), sys.render(published.error()).c_str());
      self->send_exit(coordinator, caf::exit_reason::kill);
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
      return 1;
    }
    const std::string coordinator_at = at_host + ":" + std::to_string(*published);
    if (nodes > 0 && attempt == 0) {
      std::printf("troupe launch: %d local process%s; waiting for %d node%s: on each, run\n"
                  "  TROUPE_SECRET=<the same secret> troupe node --coordinator %s%s\n",
                  nproc, nproc == 1 ? "" : "es", nodes, nodes == 1 ? "" : "s", listen.c_str(),
                  !tls.on ? "" : tls.cert.empty() ? " --tls" : " --tls-cert <its cert> --tls-key <its key> --tls-ca <the CA>");
      std::fflush(stdout);
    }
    std::vector<pid_t> pids;
    std::vector<bool> running, expected;  // expected: a loss the job went on without (elastic)
    std::vector<int> slot_of;
    std::vector<int> respawns(size_t(nproc), 0);  // replacements started per slot
    constexpr int kMaxRespawns = 10;              // a slot that keeps failing gets no more
    auto start_process = [&](int slot) {
      std::vector<std::string> argv_s = {"troupe", "node", "--coordinator", coordinator_at, "--slot", std::to_string(slot)};
      for (const auto& f : tls.flags()) argv_s.push_back(f);
      std::vector<char*> argv;
      for (auto& a : argv_s) argv.push_back(a.data());
      argv.push_back(nullptr);
      pid_t pid = 0;
      if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) != 0) return false;
      pids.push_back(pid);
      running.push_back(true);
      expected.push_back(false);
      slot_of.push_back(slot);
      return true;
    };
    for (int r = 0; r < nproc; ++r)
      if (!start_process(r)) {
        std::fprintf(stderr, "troupe launch: cannot start process %d\n", r);
        stop_all(pids, running);
        self->send_exit(coordinator, caf::exit_reason::kill);
        return 1;
      }
    auto name_of = [&](size_t k) {
      return "process " + (k < size_t(nproc) ? std::to_string(placement.local_ranks[k])
                                             : "replacing slot " + std::to_string(slot_of[k])) +
             " (pid " + std::to_string(pids[k]) + ")";
    };
    // Reaps the local processes that have ended; prints and returns the ones that failed
    // (a loss the job already went on without is not a failure).
    auto reap = [&] {
      std::vector<std::pair<size_t, int>> failed;
      for (size_t k = 0; k < pids.size(); ++k) {
        int st = 0;
        if (running[k] && ::waitpid(pids[k], &st, WNOHANG) == pids[k]) {
          running[k] = false;
          if ((!WIFEXITED(st) || WEXITSTATUS(st) != 0) && !expected[k]) failed.push_back({k, st});
        }
      }
      for (const auto& [k, st] : failed)
        if (WIFEXITED(st))
          std::fprintf(stderr, "troupe launch: %s exited with status %d\n", name_of(k).c_str(), WEXITSTATUS(st));
        else
          std::fprintf(stderr, "troupe launch: %s was killed by signal %d\n", name_of(k).c_str(), WTERMSIG(st));
      return failed;
    };
    auto status_code = [](int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); };
    // Wait for the coordinator's word on the job, or for a local process to fail first.
    bool over = false;
    std::string why;
    code = 0;
    while (!over) {
      self->receive(
          [&](done_atom, int32_t c, const std::string& w) { over = true, code = c, why = w; },
          [&](caf::down_msg& dm) {
            if (dm.source == coordinator.address() && !over)
              over = true, code = 1, why = "the coordinator failed: " + sys.render(dm.reason);
          },
          [&](lost_atom, int32_t slot, int32_t pid, const std::string& w) {
            // Elastic: the job went on without it. What is left of it (a hung process) is
            // killed, so it cannot come back, and a replacement starts in its slot.
            for (size_t k = 0; k < pids.size(); ++k)
              if (slot >= 0 && slot_of[k] == slot && pids[k] == pid) {  // a node elsewhere has its own pids
                expected[k] = true;
                if (running[k]) {
                  ::kill(pids[k], SIGKILL);
                  int st = 0;
                  ::waitpid(pids[k], &st, 0);
                  running[k] = false;
                }
              }
            if (policy_job) {
              // The processes left hold the lost shards' copies: nothing to start.
            } else if (slot >= 0 && elastic.respawn() && ++respawns[size_t(slot)] > kMaxRespawns) {
              std::fprintf(stderr, "troupe launch: slot %d was lost %d times: no more replacements for it\n", slot,
                           respawns[size_t(slot)] - 1);
            } else if (slot >= 0 && elastic.respawn()) {
              if (start_process(slot)) {
                record("\"event\":\"respawn\",\"slot\":" + std::to_string(slot) + ",\"pid\":" + std::to_string(pids.back()));
              } else {
                std::fprintf(stderr, "troupe launch: cannot start a replacement for slot %d (%s)\n", slot, w.c_str());
              }
            }
          },
          caf::after(std::chrono::milliseconds(50)) >> [] {});
      if (over) break;
      if (interrupted) {
        code = 130, why = "interrupted: stopping the job";
        self->send(coordinator, stop_atom::value, int32_t(code), std::string("troupe launch was interrupted"));
        break;
      }
      auto failed = reap();
      if (!failed.empty() && !respawning) {
        code = status_code(failed.front().second);
        const auto k = failed.front().first;
        const std::string what = name_of(k) + " " + (WIFEXITED(failed.front().second) ? "failed" : "was killed");
        record("\"event\":\"failed\",\"slot\":" + std::to_string(slot_of[k]) + ",\"pid\":" + std::to_string(pids[k]));
        self->send(coordinator, stop_atom::value, int32_t(code), what);
        break;
      }
      // respawn: the coordinator decides, from the process's agent going down.
    }
    if (code != 0) {
      if (!why.empty()) std::fprintf(stderr, "troupe launch: %s\n", why.c_str());
      // Others may have ended at the same moment (a peer's death breaks their links):
      // report them all, the signalled ones (the likely cause) first in the status.
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      for (const auto& [k, st] : reap())
        if (!WIFEXITED(st)) code = status_code(st);
      const int left = int(std::count(running.begin(), running.end(), true));
      if (left > 0) std::fprintf(stderr, "troupe launch: stopping the other %d process%s\n", left, left == 1 ? "" : "es");
      stop_all(pids, running);
    } else {
      // Every rank has ended well: the agents exit as soon as their end is taken.
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (std::count(running.begin(), running.end(), true) > 0 && std::chrono::steady_clock::now() < until) {
        // A replacement that came too late to take part does not fail a job that ended well.
        for (const auto& [k, st] : reap())
          if (k < size_t(nproc) || !respawning) code = status_code(st);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      stop_all(pids, running);
    }
    self->send_exit(coordinator, caf::exit_reason::kill);
    // restart_all restarts after any failure but an interrupt.
    if (code == 0 || interrupted || elastic.mode() != "restart_all" || attempt >= elastic.restarts())
      break;
    std::printf("troupe launch: restarting all %d processes from the newest checkpoint (restart %u of at most %u)\n",
                nproc, attempt + 1, elastic.restarts());
    std::fflush(stdout);
    record("\"event\":\"restart\",\"attempt\":" + std::to_string(attempt + 1));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  // A status from a node can be anything an int32 holds: never let a failure read as 0.
  return code == 0 ? 0 : (code >= 1 && code <= 255 ? code : 1);
}

}  // namespace troupe
