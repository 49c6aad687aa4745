// troupe bench actors: round trips per second of a tensor message (pipe_msg carrying a
// tensor handle) between two actors in one process, next to a raw CAF message of the same
// shape (the same scalar fields and a std::vector<float> payload, moved, never copied),
// in the same run. Checks every reply: the payload must come back intact and in
// order, and the tensor must be the same storage (no copy).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "actors/messages.hpp"
#include "apps/bench.hpp"

namespace troupe {

namespace {

using ping_atom = caf::atom_constant<caf::atom("ping")>;

caf::behavior tensor_echo(caf::event_based_actor*) {
  return {[](pipe_msg& m) { return std::move(m); }};
}

caf::behavior raw_echo(caf::event_based_actor*) {
  return {[](ping_atom, int64_t step, int32_t micro, int32_t vstage, int64_t version, std::vector<float>& data) {
    return caf::make_message(ping_atom::value, step, micro, vstage, version, std::move(data));
  }};
}

struct rate {
  double per_s = 0;
  bool ok = true;
};

rate run_tensor(caf::actor_system& sys, int64_t elements, int round_trips) {
  auto echo = sys.spawn(tensor_echo);
  caf::scoped_actor self{sys};
  tensor t = tensor::zeros({elements});
  if (elements) t.f32()[elements - 1] = 42.f;
  const storage* origin = t.storage_ptr();
  rate r;
  pipe_msg m{pipe_msg::activation, 0, 0, 1, 0, t};
  t = tensor{};
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < round_trips; ++i) {
    m.step = i;
    self->request(echo, caf::infinite, std::move(m))
        .receive([&](pipe_msg& back) { m = std::move(back); }, [&](caf::error&) { r.ok = false; });
    r.ok = r.ok && m.step == i && m.t.storage_ptr() == origin && (!elements || m.t.f32()[elements - 1] == 42.f);
  }
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  self->send_exit(echo, caf::exit_reason::user_shutdown);
  r.per_s = round_trips / dt;
  return r;
}

rate run_raw(caf::actor_system& sys, int64_t elements, int round_trips) {
  auto echo = sys.spawn(raw_echo);
  caf::scoped_actor self{sys};
  std::vector<float> data(size_t(elements), 0.f);
  if (elements) data.back() = 42.f;
  const float* origin = data.data();
  rate r;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < round_trips; ++i) {
    self->request(echo, caf::infinite, ping_atom::value, int64_t(i), int32_t(0), int32_t(1), int64_t(0), std::move(data))
        .receive(
            [&](ping_atom, int64_t step, int32_t, int32_t, int64_t, std::vector<float>& back) {
              r.ok = r.ok && step == i;
              data = std::move(back);
            },
            [&](caf::error&) { r.ok = false; });
    r.ok = r.ok && int64_t(data.size()) == elements && (!elements || data.back() == 42.f);
  }
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  self->send_exit(echo, caf::exit_reason::user_shutdown);
  r.per_s = round_trips / dt;
  (void)origin;  // a vector may be copied by CAF's copy-on-write; the rate shows it
  return r;
}

}  // namespace

int bench_actors_main(const std::vector<std::string>& args) {
  int round_trips = 20000;
  std::string json_path = "runs/bench_actors.json";
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--round-trips" && i + 1 < args.size()) {
      round_trips = std::atoi(args[++i].c_str());
      if (round_trips < 10 || round_trips > 10000000) {
        std::fprintf(stderr, "troupe bench actors: --round-trips expects 10..10000000, got '%s'\n", args[i].c_str());
        return 2;
      }
    } else if (args[i] == "--json" && i + 1 < args.size()) {
      json_path = args[++i];
    } else {
      std::fprintf(stderr, "troupe bench actors: unknown argument '%s' (usage: troupe bench actors "
                           "[--round-trips N] [--json FILE])\n", args[i].c_str());
      return 2;
    }
  }
  caf::actor_system_config cfg;
  register_message_types(cfg);
  caf::actor_system sys{cfg};
  std::printf("troupe bench actors: request/reply round trips between two actors in one process, %d each;\n"
              "median of 5 interleaved rounds\n\n%12s %16s %16s %8s %6s\n",
              round_trips, "payload", "tensor msg RT/s", "raw CAF RT/s", "ratio", "check");
  bool all_ok = true;
  std::string json = "{\"round_trips\":" + std::to_string(round_trips) + ",\"rows\":[";
  for (int64_t elements : {int64_t(1), int64_t(1024), int64_t(1) << 18}) {
    std::vector<double> ours, raw;
    bool ok = true;
    for (int round = 0; round < 5; ++round) {
      rate a = run_tensor(sys, elements, round_trips), b = run_raw(sys, elements, round_trips);
      ours.push_back(a.per_s), raw.push_back(b.per_s);
      ok = ok && a.ok && b.ok;
    }
    std::sort(ours.begin(), ours.end());
    std::sort(raw.begin(), raw.end());
    double ratio = ours[2] / raw[2];
    bool pass = ok && ratio >= 0.7;
    all_ok = all_ok && ok;  // wrong replies fail the run; the ratio is a target, shown
    std::string payload = std::to_string(elements * 4) + " B";
    std::printf("%12s %16.0f %16.0f %7.2fx %6s\n", payload.c_str(), ours[2], raw[2], ratio,
                !ok ? "FAIL" : ratio >= 0.7 ? "ok" : "slow");
    if (elements != 1) json += ',';
    json += std::string("{\"bytes\":") + std::to_string(elements * 4) +
            ",\"tensor_rt_per_s\":" + std::to_string(ours[2]) + ",\"raw_rt_per_s\":" + std::to_string(raw[2]) +
            ",\"ratio\":" + std::to_string(ratio) + ",\"replies_ok\":" + (ok ? "true" : "false") +
            ",\"ratio_at_least_0_7\":" + (pass ? "true" : "false") + "}";
  }
  json += "]}\n";
  auto dir = std::filesystem::path(json_path).parent_path();
  std::error_code ec;
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (!(std::ofstream(json_path) << json)) std::fprintf(stderr, "troupe bench actors: cannot write '%s'\n", json_path.c_str());
  std::printf("\ncheck: ok = replies intact and ratio >= 0.7; slow = replies intact, ratio below 0.7\n"
              "json: %s\n", json_path.c_str());
  if (!all_ok) std::fprintf(stderr, "troupe bench actors: a reply came back wrong or from copied storage\n");
  return all_ok ? 0 : 1;
}

}  // namespace troupe
