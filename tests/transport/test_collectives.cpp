// Conformance of every collective over every transport the process can make by name
// (inproc; tcp over loopback; shm; ucx), ranks as threads: world sizes 1..8 x counts 0, 1, odd and large against closed forms;
// the same bits on every rank; a rank that never joins fails the others within the
// deadline, never a hang.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <thread>

#include "runtime/rng.hpp"
#include "transport/collectives.hpp"

using namespace troupe;

namespace {

const size_t kCounts[] = {0, 1, 7, 100003};
const char* const kTransports[] = {"inproc", "tcp", "shm", "ucx"};

// Runs fn(rank, comm) on n threads, one per rank of a fresh group of `transport`.
void on_ranks(const std::string& transport, int n,
              const std::function<void(int, communicator&)>& fn) {
  auto group = make_group(transport, n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) threads.emplace_back([&, r] { fn(r, *group[size_t(r)]); });
  for (auto& t : threads) t.join();
}

// Integer values, so every sum is exact whatever the order: rank r's element i.
float value(int r, size_t i) { return float((r + 1) * int(1 + i % 7)); }
float summed(int n, size_t i) { return float(n * (n + 1) / 2) * float(1 + i % 7); }

using allreduce_fn = void (*)(communicator&, float*, size_t, uint64_t);

}  // namespace

TEST_CASE("collectives: every all-reduce algorithm, sizes 1..8 x counts, matches the closed form on every rank") {
  const std::pair<const char*, allreduce_fn> algorithms[] = {{"ring", ring_allreduce_sum},
                                                             {"halving-doubling", halving_doubling_allreduce_sum},
                                                             {"recursive doubling", recursive_doubling_allreduce_sum},
                                                             {"by size", allreduce_sum}};
  for (const char* transport : kTransports)
  for (auto [name, fn] : algorithms)
    for (int n = 1; n <= 8; ++n)
      for (size_t count : kCounts) {
        CAPTURE(transport);
        CAPTURE(name);
        CAPTURE(n);
        CAPTURE(count);
        std::vector<size_t> wrong(static_cast<size_t>(n), 0);
        on_ranks(transport, n, [&](int r, communicator& c) {
          std::vector<float> d(count);
          for (size_t i = 0; i < count; ++i) d[i] = value(r, i);
          fn(c, d.data(), count, 100);
          for (size_t i = 0; i < count; ++i) wrong[size_t(r)] += d[i] != summed(n, i);
        });
        for (int r = 0; r < n; ++r) CHECK(wrong[size_t(r)] == 0);
      }
}

TEST_CASE("collectives: halving-doubling and recursive doubling give every rank the same bits on non-integer data") {
  for (auto fn : {halving_doubling_allreduce_sum, recursive_doubling_allreduce_sum})
  for (int n : {2, 3, 4, 6, 8}) {
    CAPTURE(n);
    const size_t count = 1001;
    std::vector<std::vector<float>> data(static_cast<size_t>(n), std::vector<float>(count));
    rng g(7);
    for (auto& d : data)
      for (auto& x : d) x = float(g.normal());
    std::vector<double> want(count, 0.0);
    for (const auto& d : data)
      for (size_t i = 0; i < count; ++i) want[i] += double(d[i]);
    on_ranks("inproc", n, [&](int r, communicator& c) {
      fn(c, data[size_t(r)].data(), count, 0);
    });
    for (int r = 1; r < n; ++r) CHECK(data[size_t(r)] == data[0]);
    double worst = 0;
    for (size_t i = 0; i < count; ++i) worst = std::max(worst, std::abs(double(data[0][i]) - want[i]));
    CHECK(worst < 1e-5);  // fp32 rounding of an n-term sum of values near 1
  }
}

TEST_CASE("collectives: reduce-scatter leaves each rank the sum of its own chunk") {
  for (const char* transport : kTransports)
  for (int n = 1; n <= 8; ++n)
    for (size_t count : kCounts) {
      CAPTURE(transport);
      CAPTURE(n);
      CAPTURE(count);
      std::vector<size_t> wrong(static_cast<size_t>(n), 0);
      on_ranks(transport, n, [&](int r, communicator& c) {
        std::vector<float> d(count);
        for (size_t i = 0; i < count; ++i) d[i] = value(r, i);
        reduce_scatter_sum(c, d.data(), count, 8);
        for (size_t i = chunk_begin(count, n, r); i < chunk_begin(count, n, r + 1); ++i)
          wrong[size_t(r)] += d[i] != summed(n, i);
      });
      for (int r = 0; r < n; ++r) CHECK(wrong[size_t(r)] == 0);
    }
}

TEST_CASE("collectives: all-gather gives every rank every rank's chunk, f32 and i32") {
  for (const char* transport : kTransports)
  for (int n = 1; n <= 8; ++n)
    for (size_t count : kCounts) {
      CAPTURE(transport);
      CAPTURE(n);
      CAPTURE(count);
      std::vector<size_t> wrong(static_cast<size_t>(n), 0);
      on_ranks(transport, n, [&](int r, communicator& c) {
        // Each chunk holds its owner's values; the rest is garbage the gather overwrites.
        std::vector<float> f(count, -1.0f);
        std::vector<int32_t> k(count, -1);
        for (size_t i = chunk_begin(count, n, r); i < chunk_begin(count, n, r + 1); ++i)
          f[i] = float(i) * 0.5f, k[i] = int32_t(i) * 3;
        all_gather(c, f.data(), count, dtype::f32, 20);
        all_gather(c, k.data(), count, dtype::i32, 20 + kTagsPerCollective);
        for (size_t i = 0; i < count; ++i) wrong[size_t(r)] += f[i] != float(i) * 0.5f || k[i] != int32_t(i) * 3;
      });
      for (int r = 0; r < n; ++r) CHECK(wrong[size_t(r)] == 0);
    }
}

TEST_CASE("collectives: broadcast from every root reaches every rank, a root outside the group is an error") {
  for (const char* transport : kTransports)
  for (int n = 1; n <= 8; ++n)
    for (int root = 0; root < n; ++root) {
      CAPTURE(transport);
      CAPTURE(n);
      CAPTURE(root);
      const size_t count = n % 2 ? 7 : 100003;
      std::vector<size_t> wrong(static_cast<size_t>(n), 0);
      on_ranks(transport, n, [&](int r, communicator& c) {
        std::vector<float> d(count, r == root ? 0.0f : -1.0f);
        if (r == root)
          for (size_t i = 0; i < count; ++i) d[i] = float(i % 1000) + 0.25f;
        broadcast(c, d.data(), count, dtype::f32, root, 30);
        for (size_t i = 0; i < count; ++i) wrong[size_t(r)] += d[i] != float(i % 1000) + 0.25f;
      });
      for (int r = 0; r < n; ++r) CHECK(wrong[size_t(r)] == 0);
    }
  auto group = make_group("inproc", 2);
  float x = 0;
  CHECK_THROWS_WITH_AS(broadcast(*group[0], &x, 1, dtype::f32, 2, 0), "broadcast: root 2 is not a rank of a group of 2",
                       transport_error);
}

TEST_CASE("collectives: no rank leaves a barrier before the last one entered it") {
  for (const char* transport : kTransports)
  for (int n = 1; n <= 8; ++n) {
    CAPTURE(transport);
    CAPTURE(n);
    std::atomic<int> entered{0};
    std::vector<size_t> early(static_cast<size_t>(n), 0);  // leaving before everyone entered
    on_ranks(transport, n, [&](int r, communicator& c) {
      for (int round = 0; round < 3; ++round) {
        if (r == n - 1) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the straggler
        entered.fetch_add(1);
        barrier(c, 40);
        early[size_t(r)] += entered.load() != (round + 1) * n;
        barrier(c, 41);  // nobody enters the next round while another still reads the count
      }
    });
    for (int r = 0; r < n; ++r) CHECK(early[size_t(r)] == 0);
  }
}

TEST_CASE("collectives: a rank that never joins fails every other rank within the deadline") {
  using run_fn = std::function<void(communicator&, std::vector<float>&)>;
  const std::pair<const char*, run_fn> collectives[] = {
      {"halving-doubling", [](communicator& c, std::vector<float>& d) {
         halving_doubling_allreduce_sum(c, d.data(), d.size(), 0);
       }},
      {"recursive doubling", [](communicator& c, std::vector<float>& d) {
         recursive_doubling_allreduce_sum(c, d.data(), d.size(), 0);
       }},
      {"reduce-scatter", [](communicator& c, std::vector<float>& d) { reduce_scatter_sum(c, d.data(), d.size(), 0); }},
      {"all-gather", [](communicator& c, std::vector<float>& d) { all_gather(c, d.data(), d.size(), dtype::f32, 0); }},
      {"broadcast", [](communicator& c, std::vector<float>& d) { broadcast(c, d.data(), d.size(), dtype::f32, 3, 0); }},
      {"barrier", [](communicator& c, std::vector<float>&) { barrier(c, 0); }},
  };
  for (const char* transport : kTransports)
  for (const auto& [name, fn] : collectives) {
    CAPTURE(transport);
    CAPTURE(name);
    const int n = 4;
    auto group = make_group(transport, n);
    std::vector<std::string> errors(static_cast<size_t>(n));
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> threads;
    for (int r = 0; r < n - 1; ++r)  // rank n-1 is "dead"
      threads.emplace_back([&, r] {
        group[size_t(r)]->deadline = std::chrono::milliseconds(200);
        std::vector<float> d(64, 1.0f);
        try {
          fn(*group[size_t(r)], d);
        } catch (const transport_error& e) {
          errors[size_t(r)] = e.what();
        }
      });
    for (auto& t : threads) t.join();
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
    // Each of these needs the dead rank's data (or its entry) on every survivor.
    for (int r = 0; r < n - 1; ++r) CHECK(errors[size_t(r)].find("waited 200 ms") != std::string::npos);
  }
}
