// troupe bench allreduce: the all-reduce (transport/: halving-doubling up to 64 KiB, the
// ring above) over ranks as threads, one
// table row per message size, in the columns of nccl-tests: size, count, type, redop,
// time(us), algbw and busbw (GB/s, GB = 1e9; busbw = algbw x 2(n-1)/n) and #wrong. Each
// transport is measured next to a baseline in the same run: "inproc" (zero-copy
// send_async: a rank adds straight from its peer's buffer) against "inproc-copy" (the same
// ring over plain sends, each of which copies into the receiver's mailbox). Every row
// checks its answer: after the timed loop one more all-reduce of integer data must match
// the closed form on every rank; a wrong element fails the run.
#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "apps/bench.hpp"
#include "transport/collectives.hpp"

namespace troupe {

namespace {

// A transport seen only through its plain sends and receives: send_async and the reducing
// receive take the interface's default (copying) paths.
struct copying : communicator {
  explicit copying(std::shared_ptr<communicator> c) : inner(std::move(c)) {}
  int rank() const override { return inner->rank(); }
  int size() const override { return inner->size(); }
  void send(int peer, uint64_t tag, const void* d, size_t n, dtype t) override { inner->send(peer, tag, d, n, t); }
  void recv(int peer, uint64_t tag, void* d, size_t n, dtype t) override { inner->recv(peer, tag, d, n, t); }
  void abort(const std::string& why) override { inner->abort(why); }
  std::shared_ptr<communicator> inner;
};

struct result {
  double us = 0;  // median over rounds of the slowest rank's mean time per all-reduce
  size_t wrong = 0;
};

// `iters` all-reduces of `count` floats on `n` ranks, 3 rounds; then one checked run.
result measure(const std::string& variant, int n, size_t count, int iters) {
  auto group = make_group("inproc", n);
  std::vector<std::shared_ptr<communicator>> comms;
  for (auto& c : group) comms.push_back(variant == "inproc-copy" ? std::make_shared<copying>(c) : c);
  std::vector<std::vector<float>> data(size_t(n), std::vector<float>(count, 0.0f));
  std::vector<std::vector<double>> took(static_cast<size_t>(n));
  std::barrier sync(n);
  uint64_t tag = 0;
  auto rank_main = [&](int r) {
    auto& d = data[size_t(r)];
    for (int round = 0; round < 4; ++round) {  // round 0 warms up
      sync.arrive_and_wait();
      auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) allreduce_sum(*comms[size_t(r)], d.data(), count, tag + kTagsPerCollective * uint64_t(i));
      double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (round > 0) took[size_t(r)].push_back(dt / iters);
      sync.arrive_and_wait();
      if (r == 0) tag += kTagsPerCollective * uint64_t(iters);
    }
    // Integers, so every sum is exact whatever the order.
    for (size_t i = 0; i < count; ++i) d[i] = float((r + 1) * int(1 + i % 7));
    sync.arrive_and_wait();
    allreduce_sum(*comms[size_t(r)], d.data(), count, tag);
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < n; ++r) threads.emplace_back(rank_main, r);
  rank_main(0);
  for (auto& t : threads) t.join();
  result res;
  std::vector<double> slowest;
  for (size_t k = 0; k < took[0].size(); ++k) {
    double m = 0;
    for (int r = 0; r < n; ++r) m = std::max(m, took[size_t(r)][k]);
    slowest.push_back(m);
  }
  std::sort(slowest.begin(), slowest.end());
  res.us = slowest[slowest.size() / 2] * 1e6;
  const float ranks_sum = float(n * (n + 1) / 2);
  for (int r = 0; r < n; ++r)
    for (size_t i = 0; i < count; ++i) res.wrong += data[size_t(r)][i] != ranks_sum * float(1 + i % 7);
  return res;
}

}  // namespace

int bench_allreduce_main(const std::vector<std::string>& args) {
  const char* usage = "usage: troupe bench allreduce [--ranks N[,N...]] [--max-bytes B] [--json FILE]";
  std::vector<int> ranks{2, 4};
  size_t max_bytes = size_t(64) << 20;
  std::string json_path = "runs/bench_allreduce.json";
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--ranks" && i + 1 < args.size()) {
      ranks.clear();
      const std::string& list = args[++i];
      for (size_t at = 0; at <= list.size();) {
        size_t comma = std::min(list.find(',', at), list.size());
        const std::string one = list.substr(at, comma - at);
        char* end = nullptr;
        long v = std::strtol(one.c_str(), &end, 10);
        if (one.empty() || *end || v < 1 || v > 64) {
          std::fprintf(stderr, "troupe bench allreduce: --ranks expects numbers 1..64 separated by commas, got '%s'\n",
                       list.c_str());
          return 2;
        }
        ranks.push_back(int(v));
        at = comma + 1;
      }
    } else if (args[i] == "--max-bytes" && i + 1 < args.size()) {
      char* end = nullptr;
      long long v = std::strtoll(args[++i].c_str(), &end, 10);
      if (*end || v < 4 || v > (1LL << 30)) {
        std::fprintf(stderr, "troupe bench allreduce: --max-bytes expects 4..1073741824, got '%s'\n", args[i].c_str());
        return 2;
      }
      max_bytes = size_t(v);
    } else if (args[i] == "--json" && i + 1 < args.size()) {
      json_path = args[++i];
    } else {
      std::fprintf(stderr, "troupe bench allreduce: unknown argument '%s' (%s)\n", args[i].c_str(), usage);
      return 2;
    }
  }
  std::printf("troupe bench allreduce: all-reduce (sum, float; halving-doubling up to 64 KiB, ring above) over\n"
              "ranks as threads of one process; time is the slowest rank's mean per all-reduce, median of 3\n"
              "rounds; inproc-copy is the same algorithm over copying sends (the baseline); busbw = algbw x 2(n-1)/n\n");
  bool all_ok = true;
  std::string json = "{\"rows\":[";
  bool first = true;
  for (int n : ranks) {
    std::printf("\n# ranks %d\n%12s %12s %6s %6s  %-12s %10s %8s %8s %7s   %-12s %10s %8s %8s %7s %7s\n", n, "size",
                "count", "type", "redop", "transport", "time(us)", "algbw", "busbw", "#wrong", "baseline", "time(us)",
                "algbw", "busbw", "#wrong", "speedup");
    for (size_t bytes = 4096; bytes <= max_bytes; bytes *= 4) {
      const size_t count = bytes / 4;
      const int iters = int(std::clamp<size_t>((size_t(64) << 20) / bytes, 5, 200));
      result a = measure("inproc", n, count, iters), b = measure("inproc-copy", n, count, iters);
      auto algbw = [&](double us) { return us > 0 ? double(bytes) / (us * 1e-6) / 1e9 : 0.0; };
      const double factor = n > 1 ? 2.0 * (n - 1) / n : 0.0;
      std::printf("%12zu %12zu %6s %6s  %-12s %10.1f %8.2f %8.2f %7zu   %-12s %10.1f %8.2f %8.2f %7zu %6.2fx\n", bytes,
                  count, "float", "sum", "inproc", a.us, algbw(a.us), algbw(a.us) * factor, a.wrong, "inproc-copy",
                  b.us, algbw(b.us), algbw(b.us) * factor, b.wrong, a.us > 0 ? b.us / a.us : 0.0);
      all_ok = all_ok && a.wrong == 0 && b.wrong == 0;
      char row[512];
      std::snprintf(row, sizeof row,
                    "%s{\"ranks\":%d,\"size\":%zu,\"count\":%zu,\"type\":\"float\",\"redop\":\"sum\","
                    "\"inproc\":{\"time_us\":%.2f,\"algbw\":%.3f,\"busbw\":%.3f,\"wrong\":%zu},"
                    "\"inproc_copy\":{\"time_us\":%.2f,\"algbw\":%.3f,\"busbw\":%.3f,\"wrong\":%zu}}",
                    first ? "" : ",", n, bytes, count, a.us, algbw(a.us), algbw(a.us) * factor, a.wrong, b.us,
                    algbw(b.us), algbw(b.us) * factor, b.wrong);
      json += row;
      first = false;
    }
  }
  json += "]}\n";
  auto dir = std::filesystem::path(json_path).parent_path();
  std::error_code ec;
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (!(std::ofstream(json_path) << json))
    std::fprintf(stderr, "troupe bench allreduce: cannot write '%s'\n", json_path.c_str());
  std::printf("\njson: %s\n", json_path.c_str());
  if (!all_ok) std::fprintf(stderr, "troupe bench allreduce: an all-reduce gave a wrong element\n");
  return all_ok ? 0 : 1;
}

}  // namespace troupe
