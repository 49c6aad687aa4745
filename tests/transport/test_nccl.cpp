// The nccl transport (transport/nccl/nccl.hpp). Where the build or a GPU is missing, a
// group is a clear error (this part runs everywhere). Where GPUs are, ranks as threads
// (rank r on device r): every collective, world sizes 1 .. min(devices, 8) x counts 0, 1,
// odd and large, against closed forms; a rank that never calls fails the others within
// the deadline. Those cases say they were skipped when the machine has too few GPUs.
#include <doctest/doctest.h>

#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "runtime/check.hpp"
#include "transport/nccl/nccl.hpp"
#include "transport/rendezvous.hpp"
#include "tests/support/processes.hpp"

using namespace troupe;

namespace {

const size_t kCounts[] = {0, 1, 7, 100003};

// Integer values, so sums are exact in any order: rank r's element i.
float value(int r, size_t i) { return float((r + 1) * int(1 + i % 7)); }
float summed(int n, size_t i) { return float(n * (n + 1) / 2) * float(1 + i % 7); }

void on_ranks(std::vector<std::unique_ptr<nccl_group>>& group, const std::function<void(int, nccl_group&)>& fn) {
  std::vector<std::thread> threads;
  for (size_t r = 0; r < group.size(); ++r) threads.emplace_back([&, r] { fn(int(r), *group[r]); });
  for (auto& t : threads) t.join();
}

}  // namespace

TEST_CASE("nccl: without the build or without a GPU a group is a clear error, and bad ranks are input errors") {
  std::string why;
  const bool available = nccl_available(&why);
  if (!available) {
    CHECK(!why.empty());
    std::string what;
    try {
      make_nccl_threads(1);
    } catch (const std::exception& e) {
      what = e.what();
    }
#ifdef TROUPE_HAVE_NCCL
    CHECK(what.find("nccl: no CUDA device is visible") == 0);
#else
    CHECK(what.find("the nccl transport is not built") == 0);
    CHECK(cuda_device_count() == 0);
#endif
  }
  CHECK_THROWS_WITH_AS(make_group("nccl", 2),
                       doctest::Contains("transport 'nccl' moves device memory: it is an nccl_group"), input_error);
#ifdef TROUPE_HAVE_NCCL
  memory_rendezvous store;
  CHECK_THROWS_WITH_AS(join_nccl_group(2, 2, store, "id", 0, std::chrono::milliseconds(100)),
                       "nccl: rank 2 is not a rank of a group of 2", input_error);
  CHECK_THROWS_WITH_AS(make_nccl_threads(0), "nccl: a group needs at least 1 rank, got 0", input_error);
  if (available) {
    const int devices = cuda_device_count();
    CHECK_THROWS_AS(make_nccl_threads(devices + 1), transport_error);
  }
#endif
}

TEST_CASE("nccl: every collective over 1 .. min(GPUs, 8) ranks and counts 0, 1, odd, large matches the closed form") {
  const int devices = std::min(cuda_device_count(), 8);
  if (devices < 1) {
    MESSAGE("skipped: no CUDA device here (the nccl collectives are tested where a GPU is)");
    return;
  }
  for (int n = 1; n <= devices; ++n)
    for (size_t count : kCounts) {
      CAPTURE(n);
      CAPTURE(count);
      auto group = make_nccl_threads(n);
      std::vector<size_t> wrong(size_t(n), 0);
      on_ranks(group, [&](int r, nccl_group& g) {
        const int dev = g.device();
        const size_t bytes = count * sizeof(float);
        std::vector<float> host(count), back(count * size_t(n));
        for (size_t i = 0; i < count; ++i) host[i] = value(r, i);
        // all-reduce, in place
        device_buffer d(bytes, dev);
        d.upload(host.data(), bytes);
        g.all_reduce_sum(static_cast<float*>(d.data()), count);
        d.download(back.data(), bytes);
        for (size_t i = 0; i < count; ++i) wrong[size_t(r)] += back[i] != summed(n, i);
        // reduce-scatter: rank r gets the sum of everyone's block r
        std::vector<float> in(count * size_t(n));
        for (size_t i = 0; i < in.size(); ++i) in[i] = value(r, i);
        device_buffer din(in.size() * sizeof(float), dev), dout(bytes, dev);
        din.upload(in.data(), in.size() * sizeof(float));
        g.reduce_scatter_sum(static_cast<const float*>(din.data()), static_cast<float*>(dout.data()), count);
        dout.download(back.data(), bytes);
        for (size_t i = 0; i < count; ++i) wrong[size_t(r)] += back[i] != summed(n, size_t(r) * count + i);
        // all-gather of i32: block k is rank k's
        std::vector<int32_t> mine(count), all(count * size_t(n));
        for (size_t i = 0; i < count; ++i) mine[i] = int32_t(r * 1000003 + int(i));
        device_buffer dm(count * 4, dev), da(all.size() * 4, dev);
        dm.upload(mine.data(), count * 4);
        g.all_gather(dm.data(), da.data(), count, dtype::i32);
        da.download(all.data(), all.size() * 4);
        for (int k = 0; k < n; ++k)
          for (size_t i = 0; i < count; ++i) wrong[size_t(r)] += all[size_t(k) * count + i] != int32_t(k * 1000003 + int(i));
        // broadcast from every root
        for (int root = 0; root < n; ++root) {
          d.upload(host.data(), bytes);
          g.broadcast(d.data(), count, dtype::f32, root);
          d.download(back.data(), bytes);
          for (size_t i = 0; i < count; ++i) wrong[size_t(r)] += back[i] != value(root, i);
        }
        // pairwise exchange (even worlds) and a barrier
        if (n % 2 == 0) {
          device_buffer dr(bytes, dev);
          d.upload(host.data(), bytes);
          g.exchange(r ^ 1, d.data(), dr.data(), count, dtype::f32);
          dr.download(back.data(), bytes);
          for (size_t i = 0; i < count; ++i) wrong[size_t(r)] += back[i] != value(r ^ 1, i);
        }
        g.barrier();
      });
      destroy_nccl_threads(group);
      for (int r = 0; r < n; ++r) CHECK(wrong[size_t(r)] == 0);
    }
}

TEST_CASE("nccl: a rank that never calls fails the others within the deadline, never a hang") {
  if (cuda_device_count() < 2) {
    MESSAGE("skipped: fewer than 2 CUDA devices here (needs one per rank)");
    return;
  }
  auto group = make_nccl_threads(2);
  group[0]->deadline = std::chrono::milliseconds(2000);
  device_buffer d(1024 * sizeof(float), 0);
  const auto t0 = std::chrono::steady_clock::now();
  std::string what;
  try {
    group[0]->all_reduce_sum(static_cast<float*>(d.data()), 1024);  // rank 1 never joins in
  } catch (const transport_error& e) {
    what = e.what();
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(what.find("nccl: rank 0: all_reduce_sum: did not finish within 2000 ms") == 0);
  CHECK(took < 10.0);
  group[1]->abort("the test is over");
  destroy_nccl_threads(group);
}

TEST_CASE("nccl: troupe bench allreduce --transports nccl checks its rows where GPUs are and says why it skips elsewhere") {
  const auto r = troupe::testing::run("bench allreduce --ranks 1 --transports nccl,inproc --max-bytes 16384 "
                                      "--json /tmp/troupe_bench_nccl.json");
  const std::string& out = r.output;
  CAPTURE(out);
  CHECK(r.code == 0);
  if (cuda_device_count() < 1) {
    CHECK(out.find("(nccl skipped: ") != std::string::npos);
  } else {
    CHECK(out.find(" nccl         GPUs ") != std::string::npos);
  }
  CHECK(out.find(" inproc       threads ") != std::string::npos);
}
