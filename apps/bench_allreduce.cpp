// troupe bench allreduce: the all-reduce of transport/ (halving-doubling up to 64 KiB, the
// ring above), one table row per transport and message size, in the columns of
// nccl-tests: size, count, type, redop, time(us), algbw and busbw (GB/s, GB = 1e9; busbw =
// algbw x 2(n-1)/n) and #wrong. Rows, measured in the same run:
//   inproc       ranks are threads; zero-copy send_async (a rank adds from its peer's buffer)
//   inproc-copy  the same over copying sends: the baseline the zero-copy path must beat
//   tcp          ranks are processes (this binary started again as workers), loopback TCP
//   shm          ranks are processes, through shared memory (transport/shm/)
//   ucx          ranks are processes, through UCX (transport/ucx/: shared memory and CMA here)
//   openmpi      baseline: MPI_Allreduce of Debian's Open MPI (tests/reference/mpi_allreduce.c,
//                built beside this binary), processes, its shared-memory path
//   gloo         baseline: PyTorch 1.13's gloo all_reduce (tests/reference/gloo_allreduce.py)
//   nccl         ranks are threads, one GPU each, device buffers through NCCL
//                (transport/nccl/); not in the default list, skipped with a note where
//                the build or a GPU is missing
// The baselines use the same sizes, rounds and check; one that is not installed is skipped
// with a note. Below the table, the bars: ours against Open MPI and Gloo.
// The first line is the ceiling: single-thread memcpy bandwidth of this machine. Every row
// checks its answer: after the timed loops one more all-reduce of integer data must match
// the closed form on every rank; a wrong element fails the run.
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "apps/bench.hpp"
#include "transport/collectives.hpp"
#include "transport/nccl/nccl.hpp"
#include "transport/tcp/tcp.hpp"
#include "transport/transports.hpp"

extern char** environ;

namespace troupe {

namespace {

struct result {
  double us = 0;  // median over rounds of the slowest rank's mean time per all-reduce
  size_t wrong = 0;
};

std::vector<size_t> sizes_up_to(size_t max_bytes) {
  std::vector<size_t> v;
  for (size_t b = 4096; b <= max_bytes; b *= 4) v.push_back(b);
  return v;
}

// One rank's part of the whole table for one transport: for each size, 3 timed rounds of
// all-reduces (after one warm-up round), then the checked one. Every rank returns the same
// results (times and wrong counts are summed over the group).
std::vector<result> run_rank(communicator& c, const std::vector<size_t>& sizes) {
  const int n = c.size(), r = c.rank();
  uint64_t tag = 0;
  auto next_tag = [&] { return (tag += kTagsPerCollective); };
  std::vector<result> out;
  for (size_t bytes : sizes) {
    const size_t count = bytes / 4;
    const int iters = int(std::clamp<size_t>((size_t(64) << 20) / bytes, 5, 200));
    std::vector<float> d(count, 0.0f);
    std::vector<double> slowest;
    for (int round = 0; round < 4; ++round) {
      barrier(c, next_tag());
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) allreduce_sum(c, d.data(), count, next_tag());
      const double mine = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
      std::vector<float> each(static_cast<size_t>(n), 0.0f);  // every rank's time, in its slot
      each[size_t(r)] = float(mine * 1e6);
      allreduce_sum(c, each.data(), each.size(), next_tag());
      if (round > 0) slowest.push_back(*std::max_element(each.begin(), each.end()));
    }
    std::sort(slowest.begin(), slowest.end());
    // Integers, so every sum is exact whatever the order.
    for (size_t i = 0; i < count; ++i) d[i] = float((r + 1) * int(1 + i % 7));
    allreduce_sum(c, d.data(), count, next_tag());
    const float ranks_sum = float(n * (n + 1) / 2);
    float wrong = 0;
    for (size_t i = 0; i < count; ++i) wrong += d[i] != ranks_sum * float(1 + i % 7);
    allreduce_sum(c, &wrong, 1, next_tag());
    out.push_back({slowest[slowest.size() / 2], size_t(wrong)});
  }
  return out;
}

std::vector<result> on_threads(const std::string& variant, int n, const std::vector<size_t>& sizes) {
  auto group = make_group("inproc", n);
  std::vector<std::vector<result>> results(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      std::shared_ptr<communicator> c = group[size_t(r)];
      if (variant == "inproc-copy") c = std::make_shared<copying_view>(c);
      results[size_t(r)] = run_rank(*c, sizes);
    });
  for (auto& t : threads) t.join();
  return results[0];
}

// NCCL on device buffers, rank r a thread on GPU r: the same rounds and check as run_rank.
std::vector<result> on_nccl(int n, const std::vector<size_t>& sizes) {
  auto group = make_nccl_threads(n);
  // per_round[r][k][round]: rank r's mean time per all-reduce of sizes[k]; wrong[r][k].
  std::vector<std::vector<std::vector<double>>> per_round(static_cast<size_t>(n));
  std::vector<std::vector<size_t>> wrong(static_cast<size_t>(n));
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        nccl_group& g = *group[size_t(r)];
        for (size_t bytes : sizes) {
          const size_t count = bytes / 4;
          const int iters = int(std::clamp<size_t>((size_t(64) << 20) / bytes, 5, 200));
          device_buffer d(bytes, g.device());
          std::vector<float> host(count, 0.0f);
          d.upload(host.data(), bytes);
          std::vector<double> rounds;
          for (int round = 0; round < 4; ++round) {
            g.barrier();
            auto t0 = std::chrono::steady_clock::now();
            for (int i = 0; i < iters; ++i) g.all_reduce_sum(static_cast<float*>(d.data()), count);
            rounds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters);
          }
          per_round[size_t(r)].push_back(rounds);
          for (size_t i = 0; i < count; ++i) host[i] = float((r + 1) * int(1 + i % 7));
          d.upload(host.data(), bytes);
          g.all_reduce_sum(static_cast<float*>(d.data()), count);
          d.download(host.data(), bytes);
          const float ranks_sum = float(n * (n + 1) / 2);
          size_t bad = 0;
          for (size_t i = 0; i < count; ++i) bad += host[i] != ranks_sum * float(1 + i % 7);
          wrong[size_t(r)].push_back(bad);
        }
      } catch (...) {
        errors[size_t(r)] = std::current_exception();
        for (auto& g : group) g->abort("another rank failed");
      }
    });
  for (auto& t : threads) t.join();
  destroy_nccl_threads(group);
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  std::vector<result> out;
  for (size_t k = 0; k < sizes.size(); ++k) {
    std::vector<double> slowest;
    for (int round = 1; round < 4; ++round) {
      double worst = 0;
      for (int r = 0; r < n; ++r) worst = std::max(worst, per_round[size_t(r)][k][size_t(round)]);
      slowest.push_back(worst * 1e6);
    }
    std::sort(slowest.begin(), slowest.end());
    size_t bad = 0;
    for (int r = 0; r < n; ++r) bad += wrong[size_t(r)][k];
    out.push_back({slowest[1], bad});
  }
  return out;
}

// Ranks 1..n-1 as worker processes of this binary, rank 0 here; they meet through a file
// rendezvous in a fresh directory.
std::vector<result> on_processes(const std::string& transport, int n, size_t max_bytes) {
  char dir_template[] = "/tmp/troupe-bench-XXXXXX";
  if (!::mkdtemp(dir_template)) throw std::runtime_error("cannot make a rendezvous directory in /tmp");
  const std::string dir = dir_template;
  const uint64_t group = (uint64_t(::getpid()) << 8) + uint64_t(n);
  if (!std::getenv("TROUPE_SECRET")) ::setenv("TROUPE_SECRET", make_job_secret().c_str(), 1);  // workers inherit it
  std::vector<pid_t> workers;
  for (int r = 1; r < n; ++r) {
    std::vector<std::string> args = {"troupe", "bench", "allreduce", "--worker", std::to_string(r),
                                     "--world", std::to_string(n), "--rendezvous", dir,
                                     "--group", std::to_string(group), "--max-bytes", std::to_string(max_bytes),
                                     "--transports", transport};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ) != 0)
      throw std::runtime_error("cannot start a worker process");
    workers.push_back(pid);
  }
  std::vector<result> out;
  std::string error;
  try {
    file_rendezvous store(dir);
    tcp_options opt;
    opt.group = group;
    opt.secret = std::getenv("TROUPE_SECRET");
    auto c = join_group(transport, 0, n, store, opt);
    out = run_rank(*c, sizes_up_to(max_bytes));
  } catch (const std::exception& e) {
    error = e.what();
  }
  for (pid_t pid : workers) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      if (!error.empty()) error += "; ";
      error += "worker process " + std::to_string(pid) + " failed";
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (!error.empty()) throw std::runtime_error(error);
  return out;
}

// A baseline program's table ("size B time_us T wrong W" per line), for every size; throws
// with its output if it failed or missed a size.
std::vector<result> run_baseline(const std::string& cmd, const std::vector<size_t>& sizes) {
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!p) throw std::runtime_error("cannot run: " + cmd);
  std::string out;
  char buf[512];
  std::map<size_t, result> got;
  while (std::fgets(buf, sizeof buf, p)) {
    out += buf;
    unsigned long long b = 0, w = 0;
    double us = 0;
    if (std::sscanf(buf, "size %llu time_us %lf wrong %llu", &b, &us, &w) == 3) got[size_t(b)] = {us, size_t(w)};
  }
  const int rc = ::pclose(p);
  std::vector<result> res;
  for (size_t b : sizes) {
    if (!got.count(b) || rc != 0) throw std::runtime_error("'" + cmd + "' failed:\n" + out);
    res.push_back(got[b]);
  }
  return res;
}

std::filesystem::path beside_this_binary(const std::string& name) {
  std::error_code ec;
  return std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() / name;
}

// Single-thread memcpy of 64 MiB, median of 5: the ceiling a copy between ranks can reach.
double memcpy_gbps() {
  const size_t bytes = size_t(64) << 20;
  std::vector<char> a(bytes, 1), b(bytes, 0);
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    std::memcpy(b.data(), a.data(), bytes);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    a[size_t(i)] = b[bytes - 1 - size_t(i)];  // keeps the copies from being optimized away
  }
  std::sort(t.begin(), t.end());
  return double(bytes) / t[2] / 1e9;
}

int worker_main(const std::string& transport, int rank, int world, const std::string& dir, uint64_t group,
                size_t max_bytes) {
  try {
    file_rendezvous store(dir);
    tcp_options opt;
    opt.group = group;
    if (const char* secret = std::getenv("TROUPE_SECRET")) opt.secret = secret;
    auto c = join_group(transport, rank, world, store, opt);
    run_rank(*c, sizes_up_to(max_bytes));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe bench allreduce: worker %d: %s\n", rank, e.what());
    return 1;
  }
}

bool parse_number(const std::string& text, long long lo, long long hi, long long& out) {
  char* end = nullptr;
  out = std::strtoll(text.c_str(), &end, 10);
  return !text.empty() && !*end && out >= lo && out <= hi;
}

}  // namespace

int bench_allreduce_main(const std::vector<std::string>& args) {
  const char* usage =
      "usage: troupe bench allreduce [--ranks N[,N...]] [--max-bytes B] "
      "[--transports inproc,inproc-copy,tcp,shm,ucx,openmpi,gloo,nccl] "
      "[--json FILE]";
  std::vector<int> ranks{2, 4};
  std::vector<std::string> transports{"inproc", "inproc-copy", "tcp", "shm", "ucx", "openmpi", "gloo"};
  size_t max_bytes = size_t(64) << 20;
  std::string json_path = "runs/bench_allreduce.json";
  long long worker = -1, world = 0, group = 0;
  std::string rendezvous_dir;
  auto bad = [&](const std::string& flag, const std::string& expects, const std::string& got) {
    std::fprintf(stderr, "troupe bench allreduce: %s expects %s, got '%s'\n", flag.c_str(), expects.c_str(),
                 got.c_str());
    return 2;
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has_value = i + 1 < args.size();
    long long v = 0;
    if (a == "--ranks" && has_value) {
      ranks.clear();
      const std::string list = args[++i];
      for (size_t at = 0; at <= list.size();) {
        size_t comma = std::min(list.find(',', at), list.size());
        if (!parse_number(list.substr(at, comma - at), 1, 64, v))
          return bad(a, "numbers 1..64 separated by commas", list);
        ranks.push_back(int(v));
        at = comma + 1;
      }
    } else if (a == "--transports" && has_value) {
      transports.clear();
      const std::string list = args[++i];
      for (size_t at = 0; at <= list.size();) {
        size_t comma = std::min(list.find(',', at), list.size());
        std::string t = list.substr(at, comma - at);
        if (t != "inproc" && t != "inproc-copy" && t != "tcp" && t != "shm" && t != "ucx" && t != "openmpi" &&
            t != "gloo" && t != "nccl")
          return bad(a, "inproc, inproc-copy, tcp, shm, ucx, openmpi, gloo or nccl", t);
        transports.push_back(t);
        at = comma + 1;
      }
    } else if (a == "--max-bytes" && has_value) {
      if (!parse_number(args[++i], 4096, 1LL << 30, v)) return bad(a, "4096..1073741824", args[i]);
      max_bytes = size_t(v);
    } else if (a == "--json" && has_value) {
      json_path = args[++i];
    } else if (a == "--worker" && has_value && parse_number(args[i + 1], 1, 63, worker)) {  // internal
      ++i;
    } else if (a == "--world" && has_value && parse_number(args[i + 1], 2, 64, world)) {
      ++i;
    } else if (a == "--group" && has_value && parse_number(args[i + 1], 0, (1LL << 62), group)) {
      ++i;
    } else if (a == "--rendezvous" && has_value) {
      rendezvous_dir = args[++i];
    } else {
      std::fprintf(stderr, "troupe bench allreduce: unknown or incomplete argument '%s' (%s)\n", a.c_str(), usage);
      return 2;
    }
  }
  if (worker > 0) {
    // A worker dies with the bench that started it (never an orphan polling its links).
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (transports.size() != 1 || !is_process_transport(transports[0]))
      return bad("--transports", "tcp, shm or ucx for a worker", "");
    return worker_main(transports[0], int(worker), int(world), rendezvous_dir, uint64_t(group), max_bytes);
  }

  const double ceiling = memcpy_gbps();
  std::printf("troupe bench allreduce: all-reduce (sum, float; halving-doubling up to 64 KiB, ring above); time is\n"
              "the slowest rank's mean per all-reduce, median of 3 rounds; busbw = algbw x 2(n-1)/n.\n"
              "inproc: ranks are threads, zero-copy; inproc-copy: the same over copying sends (baseline);\n"
              "tcp: ranks are processes on loopback; shm: processes through shared memory; ucx: processes\n"
              "through UCX.\n"
              "ceiling: single-thread memcpy of 64 MiB on this machine: %.2f GB/s\n",
              ceiling);
  bool all_ok = true;
  char head[256];
  std::snprintf(head, sizeof head, "%12s %12s %6s %6s  %-12s %-9s %12s %8s %8s %7s\n", "size", "count", "type", "redop",
                "transport", "ranks as", "time(us)", "algbw", "busbw", "#wrong");
  std::string json = "{\"memcpy_gbps\":" + std::to_string(ceiling) + ",\"rows\":[";
  bool first = true;
  const auto sizes = sizes_up_to(max_bytes);
  std::map<std::tuple<int, size_t, std::string>, double> measured;  // (ranks, bytes, transport) -> us
  for (int n : ranks) {
    std::vector<std::pair<std::string, std::vector<result>>> by_transport;
    for (const auto& t : transports) {
      if ((is_process_transport(t) || t == "openmpi" || t == "gloo") && n == 1) continue;  // one process has no link
      try {
        if (t == "openmpi") {
          const auto bin = beside_this_binary("mpi_allreduce");
          if (!std::filesystem::exists(bin) || std::system("command -v mpirun >/dev/null 2>&1") != 0) {
            std::printf("(openmpi skipped: no mpirun or no %s; scripts/setup.sh installs Open MPI)\n", bin.c_str());
            continue;
          }
          const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
          const std::string root = ::geteuid() == 0 ? "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " : "";
          by_transport.push_back({t, run_baseline(root + "mpirun -np " + std::to_string(n) + " --bind-to none " +
                                                      (unsigned(n) > cores ? "--oversubscribe " : "") + bin.string() +
                                                      " " + std::to_string(max_bytes),
                                                  sizes)});
          continue;
        }
        if (t == "gloo") {
          if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
            std::printf("(gloo skipped: /usr/bin/python3 cannot import torch; apt install python3-torch)\n");
            continue;
          }
          by_transport.push_back({t, run_baseline("/usr/bin/python3 tests/reference/gloo_allreduce.py --world " +
                                                      std::to_string(n) + " --max-bytes " + std::to_string(max_bytes),
                                                  sizes)});
          continue;
        }
        if (t == "nccl") {
          std::string why;
          if (!nccl_available(&why)) {
            std::printf("(nccl skipped: %s)\n", why.c_str());
            continue;
          }
          by_transport.push_back({t, on_nccl(n, sizes)});
          continue;
        }
        by_transport.push_back(
            {t, is_process_transport(t) ? on_processes(t, n, max_bytes) : on_threads(t, n, sizes)});
      } catch (const std::exception& e) {
        std::fprintf(stderr, "troupe bench allreduce: %s with %d ranks: %s\n", t.c_str(), n, e.what());
        all_ok = false;
      }
    }
    if (by_transport.empty()) {
      std::printf("\n# ranks %d: no transport finished (errors above)\n", n);
      continue;
    }
    std::printf("\n# ranks %d\n%s", n, head);
    for (size_t k = 0; k < sizes.size(); ++k)
      for (const auto& [t, res] : by_transport) {
        const size_t bytes = sizes[k];
        const result& x = res[k];
        const double algbw = x.us > 0 ? double(bytes) / (x.us * 1e-6) / 1e9 : 0.0;
        const double busbw = algbw * (n > 1 ? 2.0 * (n - 1) / n : 0.0);
        std::printf("%12zu %12zu %6s %6s  %-12s %-9s %12.1f %8.2f %8.2f %7zu\n", bytes, bytes / 4, "float", "sum",
                    t.c_str(), t.rfind("inproc", 0) == 0 ? "threads" : t == "nccl" ? "GPUs" : "processes", x.us, algbw,
                    busbw, x.wrong);
        all_ok = all_ok && x.wrong == 0;
        measured[std::make_tuple(n, bytes, t)] = x.us;
        char row[320];
        std::snprintf(row, sizeof row,
                      "%s{\"ranks\":%d,\"transport\":\"%s\",\"size\":%zu,\"count\":%zu,\"type\":\"float\","
                      "\"redop\":\"sum\",\"time_us\":%.2f,\"algbw\":%.3f,\"busbw\":%.3f,\"wrong\":%zu}",
                      first ? "" : ",", n, t.c_str(), bytes, bytes / 4, x.us, algbw, busbw, x.wrong);
        json += row;
        first = false;
      }
  }
  json += "]";
  // The bars, from the rows above: processes against processes (shm, tcp), and the
  // threads of one process for comparison.
  std::printf("\n");
  std::string bars;
  auto bar = [&](const char* what, int n, size_t bytes, const std::string& ours, const std::string& theirs,
                 bool latency, double need) {
    double a = -1, b = -1;
    for (const auto& [key, us] : measured)
      if (key == std::make_tuple(n, bytes, ours)) a = us;
      else if (key == std::make_tuple(n, bytes, theirs)) b = us;
    if (a <= 0 || b <= 0) {
      std::printf("  %-58s n/a (%s or %s not measured)\n", what, ours.c_str(), theirs.c_str());
      return;
    }
    const double ratio = latency ? a / b : b / a;  // busbw ratio = inverse time ratio
    const bool met = latency ? ratio <= need : ratio >= need;
    std::printf("  %-58s %6.2fx  bar %s%.1fx: %s\n", what, ratio, latency ? "<=" : ">=", need, met ? "met" : "NOT met");
    char row[256];
    std::snprintf(row, sizeof row, "%s{\"what\":\"%s\",\"ratio\":%.3f,\"bar\":%.2f,\"met\":%s}",
                  bars.empty() ? "" : ",", what, ratio, need, met ? "true" : "false");
    bars += row;
  };
  for (const std::string ours : {"shm", "ucx", "tcp", "inproc"}) {
    const std::string tag = ours == "inproc" ? "inproc (threads)" : ours + " (processes)";
    bar((tag + ": 2 ranks 16 MiB busbw / Open MPI").c_str(), 2, size_t(16) << 20, ours, "openmpi", false, 1.5);
    bar((tag + ": 2 ranks 16 MiB busbw / Gloo").c_str(), 2, size_t(16) << 20, ours, "gloo", false, 5.0);
    bar((tag + ": 2 ranks 4 KiB time / Open MPI").c_str(), 2, 4096, ours, "openmpi", true, 1.0);
    bar((tag + ": 4 ranks 64 MiB busbw / Open MPI").c_str(), 4, size_t(64) << 20, ours, "openmpi", false, 2.0);
  }
  json += ",\"bars\":[" + bars + "]}\n";
  auto dir = std::filesystem::path(json_path).parent_path();
  std::error_code ec;
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (!(std::ofstream(json_path) << json))
    std::fprintf(stderr, "troupe bench allreduce: cannot write '%s'\n", json_path.c_str());
  std::printf("\njson: %s\n", json_path.c_str());
  if (!all_ok) std::fprintf(stderr, "troupe bench allreduce: a run failed or an all-reduce gave a wrong element\n");
  return all_ok ? 0 : 1;
}

}  // namespace troupe
