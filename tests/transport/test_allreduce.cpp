// The inproc transport and the ring all-reduce: every world size 1..8 and counts 0, 1,
// odd and large against the closed form, ranks as threads; a missing rank is an error
// within the deadline, never a hang.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "runtime/check.hpp"
#include "runtime/rng.hpp"
#include "transport/bucketed_allreduce.hpp"
#include "transport/collectives.hpp"

using namespace troupe;

TEST_CASE("ring all-reduce: sizes 1..8 x counts 0, 1, odd, large match the closed form on every rank") {
  for (int n = 1; n <= 8; ++n)
    for (size_t count : {size_t(0), size_t(1), size_t(7), size_t(100003)}) {
      CAPTURE(n);
      CAPTURE(count);
      auto group = make_group("inproc", n);
      std::vector<std::vector<float>> data(static_cast<size_t>(n));
      for (int r = 0; r < n; ++r) {
        data[size_t(r)].resize(count);
        // Integers, so every sum is exact whatever the order.
        for (size_t i = 0; i < count; ++i) data[size_t(r)][i] = float((r + 1) * int(1 + i % 7));
      }
      std::vector<std::thread> threads;
      for (int r = 0; r < n; ++r)
        threads.emplace_back([&, r] { ring_allreduce_sum(*group[size_t(r)], data[size_t(r)].data(), count, 10); });
      for (auto& t : threads) t.join();
      const float ranks_sum = float(n * (n + 1) / 2);
      size_t wrong = 0;
      for (int r = 0; r < n; ++r)
        for (size_t i = 0; i < count; ++i) wrong += data[size_t(r)][i] != ranks_sum * float(1 + i % 7);
      CHECK(wrong == 0);
    }
}

TEST_CASE("ring all-reduce: every rank ends with the same bits on non-integer data") {
  const int n = 5;
  const size_t count = 1001;
  auto group = make_group("inproc", n);
  std::vector<std::vector<float>> data(n, std::vector<float>(count));
  rng g(3);
  for (auto& d : data)
    for (auto& x : d) x = float(g.normal());
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] { ring_allreduce_sum(*group[size_t(r)], data[size_t(r)].data(), count, 0); });
  for (auto& t : threads) t.join();
  for (int r = 1; r < n; ++r) CHECK(data[size_t(r)] == data[0]);
}

TEST_CASE("ring all-reduce: a rank that never joins makes the others fail within the deadline") {
  const int n = 3;
  auto group = make_group("inproc", n);
  std::vector<std::vector<float>> data(n, std::vector<float>(64, 1.0f));
  std::vector<std::string> errors(n);
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int r = 0; r < n - 1; ++r)  // rank n-1 is "dead"
    threads.emplace_back([&, r] {
      group[size_t(r)]->deadline = std::chrono::milliseconds(200);
      try {
        ring_allreduce_sum(*group[size_t(r)], data[size_t(r)].data(), 64, 0);
      } catch (const transport_error& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(waited < 2.0);
  for (int r = 0; r < n - 1; ++r) CHECK(errors[size_t(r)].find("waited 200 ms") != std::string::npos);
}

TEST_CASE("transport: an unknown name lists the known ones") {
  try {
    make_group("carrier-pigeon", 2);
    FAIL("expected an error");
  } catch (const input_error& e) {
    CHECK(std::string(e.what()) == "unknown transport 'carrier-pigeon' (known: inproc, tcp, shm, ucx)");
  }
}

TEST_CASE("transport: abort wakes every waiting rank with the reason") {
  auto group = make_group("inproc", 2);
  std::string error;
  std::thread waiter([&] {
    float x = 0;
    try {
      group[0]->recv(1, 7, &x, 1, dtype::f32);
    } catch (const transport_error& e) {
      error = e.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  group[1]->abort("replica 1 died");
  waiter.join();
  CHECK(error.find("replica 1 died") != std::string::npos);
}

TEST_CASE("ring all-reduce: a transport without its own reducing receive gets the same bits") {
  // copying_view forwards send and recv only, so the ring's reducing receive takes the
  // interface's default path (receive into scratch, then add) instead of inproc's in-place add.
  const int n = 3;
  const size_t count = 1001;
  std::vector<std::vector<float>> a(n, std::vector<float>(count));
  rng g(5);
  for (auto& d : a)
    for (auto& x : d) x = float(g.normal());
  auto b = a;
  std::vector<double> want(count, 0.0);
  for (const auto& d : a)
    for (size_t i = 0; i < count; ++i) want[i] += double(d[i]);
  auto run = [&](std::vector<std::vector<float>>& data, bool wrap) {
    auto group = make_group("inproc", n);
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r)
      threads.emplace_back([&, r] {
        std::shared_ptr<communicator> c = group[size_t(r)];
        if (wrap) c = std::make_shared<copying_view>(c);
        ring_allreduce_sum(*c, data[size_t(r)].data(), count, 0);
      });
    for (auto& t : threads) t.join();
  };
  run(a, false);
  run(b, true);
  for (int r = 0; r < n; ++r) CHECK(a[size_t(r)] == b[size_t(r)]);
  // And the sum is right (to fp32 rounding of a 3-term sum).
  size_t wrong = 0;
  for (size_t i = 0; i < count; ++i) wrong += std::abs(double(b[2][i]) - want[i]) > 1e-5 * (1 + std::abs(want[i]));
  CHECK(wrong == 0);
}

TEST_CASE("bucketed all-reduce: ranges reported last-first average into the closed form, in several buckets") {
  const int n = 3;
  const size_t count = 1000;
  auto group = make_group("inproc", n);
  // Integers: the sum is exact in any order; the average is the sum times fp32 1/3.
  std::vector<std::vector<float>> data(n, std::vector<float>(count));
  for (int r = 0; r < n; ++r)
    for (size_t i = 0; i < count; ++i) data[size_t(r)][i] = float(int(i % 11) * (r + 1));
  std::vector<size_t> buckets(n);
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      bucketed_allreduce b(group[size_t(r)], data[size_t(r)].data(), count, 128);
      for (int step = 0; step < 2; ++step) {
        b.begin_step(step, uint64_t(step) << 32);
        // Like a backward pass: from the end of the buffer, in uneven pieces.
        size_t end = count;
        for (size_t piece = 37; end > 0; piece = piece * 3 % 101 + 1) {
          size_t begin = end > piece ? end - piece : 0;
          b.ready(begin, end);
          end = begin;
        }
        b.finish();
        buckets[size_t(r)] = b.buckets_last_step();
      }
    });
  for (auto& t : threads) t.join();
  CHECK(buckets[0] >= 4);  // 1000 elements in buckets of 128 to 227 (a piece is at most 101)
  CHECK(buckets[0] <= 8);
  CHECK(buckets[0] == buckets[1]);
  size_t wrong = 0;
  for (int r = 0; r < n; ++r)
    for (size_t i = 0; i < count; ++i) {
      // Step 0 gives s = 6v * (1/3); step 1 averages equal values again: 3s * (1/3).
      float s = float(int(i % 11) * 6) * (1.0f / 3.0f);
      float want = (s + s + s) * (1.0f / 3.0f);
      wrong += data[size_t(r)][i] != want;
    }
  CHECK(wrong == 0);
}

TEST_CASE("bucketed all-reduce: a step that reports nothing is averaged whole, one that reports part is an error") {
  auto group = make_group("inproc", 2);
  std::vector<std::vector<float>> data(2, std::vector<float>(10, 0.0f));
  data[1].assign(10, 4.0f);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      bucketed_allreduce b(group[size_t(r)], data[size_t(r)].data(), 10, 4);
      b.begin_step(0, 0);
      b.finish();  // nothing reported: one all-reduce of everything
      b.begin_step(1, 1ull << 32);
      b.ready(5, 10);
      try {
        b.finish();
      } catch (const std::logic_error& e) {
        errors[size_t(r)] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  CHECK(data[0] == std::vector<float>(10, 2.0f));
  CHECK(data[1] == std::vector<float>(10, 2.0f));
  CHECK(errors[0] == "bucketed all-reduce: the compute reported 5 of 10 gradient elements as final");
}

TEST_CASE("inproc send_async: the receiver reads the sender's buffer, and wait returns once it has") {
  auto group = make_group("inproc", 2);
  std::vector<float> src(100000), dst(src.size(), 0.0f), acc(src.size(), 1.0f);
  for (size_t i = 0; i < src.size(); ++i) src[i] = float(i % 1000);
  send_handle a = group[0]->send_async(1, 3, src.data(), src.size(), dtype::f32);
  send_handle b = group[0]->send_async(1, 4, src.data(), src.size(), dtype::f32);
  std::thread receiver([&] {
    group[1]->recv(0, 3, dst.data(), dst.size(), dtype::f32);
    group[1]->recv_reduce_sum(0, 4, acc.data(), acc.size());
  });
  a.wait();
  b.wait();
  receiver.join();
  CHECK(dst == src);
  size_t wrong = 0;
  for (size_t i = 0; i < src.size(); ++i) wrong += acc[i] != src[i] + 1.0f;
  CHECK(wrong == 0);
}

TEST_CASE("inproc send_async: a buffer reclaimed before the receiver came is copied, and a late receiver reads it intact") {
  auto group = make_group("inproc", 2);
  std::vector<float> dst(50000);
  {
    std::vector<float> src(50000);
    for (size_t i = 0; i < src.size(); ++i) src[i] = float(i);
    auto t0 = std::chrono::steady_clock::now();
    group[0]->send_async(1, 9, src.data(), src.size(), dtype::f32).wait();  // nobody is receiving
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(1));
    std::fill(src.begin(), src.end(), -1.0f);  // the sender reuses its buffer
  }  // and frees it
  group[1]->recv(0, 9, dst.data(), dst.size(), dtype::f32);
  size_t wrong = 0;
  for (size_t i = 0; i < dst.size(); ++i) wrong += dst[i] != float(i);
  CHECK(wrong == 0);
}

TEST_CASE("inproc send_async: many loans in flight at once, received in order per tag") {
  auto group = make_group("inproc", 2);
  const int k = 6;
  std::vector<std::vector<float>> src(k, std::vector<float>(20000));
  for (int j = 0; j < k; ++j) std::fill(src[size_t(j)].begin(), src[size_t(j)].end(), float(j));
  std::vector<float> got(static_cast<size_t>(k), -1.0f);
  std::thread receiver([&] {
    std::vector<float> buf(20000);
    for (int j = 0; j < k; ++j) {
      group[1]->recv(0, 2, buf.data(), buf.size(), dtype::f32);
      got[size_t(j)] = std::all_of(buf.begin(), buf.end(), [&](float x) { return x == buf[0]; }) ? buf[0] : -2.0f;
    }
  });
  std::vector<send_handle> sent;
  for (int j = 0; j < k; ++j) sent.push_back(group[0]->send_async(1, 2, src[size_t(j)].data(), 20000, dtype::f32));
  for (auto& h : sent) h.wait();
  receiver.join();
  for (int j = 0; j < k; ++j) CHECK(got[size_t(j)] == float(j));
}
