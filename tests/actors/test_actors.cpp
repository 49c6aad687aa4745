// The actor path of `troupe train`: message types survive serialization, tensors travel
// by reference inside a process, and a whole job through the actors is repeatable bit
// for bit and matches the same job run on the trainer without actors.
#include <doctest/doctest.h>

#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "actors/messages.hpp"
#include "actors/run_job.hpp"
#include "runtime/job_spec.hpp"
#include "runtime/threads.hpp"

using namespace troupe;

namespace {

struct test_config : caf::actor_system_config {
  test_config() { register_message_types(*this); }
};

tensor random_tensor(const shape_t& shape, uint64_t seed) {
  tensor t = tensor::empty(shape);
  rng r(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = float(r.normal());
  return t;
}

proto::JobSpec tiny_gpt_job(const std::string& name, uint32_t threads) {
  return parse_job_spec(R"({"name": ")" + name + R"(",
    "model": {"gpt": {"n_layer": 2, "n_head": 2, "d_model": 32, "context": 32}},
    "data": {"dataset": "fortunes"},
    "optimizer": {"adamw": {"lr": 3e-3, "beta1": 0.9, "beta2": 0.95, "weight_decay": 0.1}, "grad_clip": 1.0},
    "train": {"batch_size": 4, "steps": 12, "eval_batches": 4, "sample_tokens": 16, "threads": )" +
                            std::to_string(threads) + R"(, "metrics_file": "/tmp/troupe_test_)" + name +
                            R"(/metrics.jsonl"}})",
                        "tiny_gpt");
}

std::vector<std::string> step_lines(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> out;
  for (std::string line; std::getline(f, line);)
    if (line.find("\"event\":\"step\"") != std::string::npos) {
      // Drop the timing fields: only what the computation produced must repeat.
      out.push_back(line.substr(0, line.find(",\"compute_s\"")));
    }
  return out;
}

}  // namespace

TEST_CASE("messages: every message type round-trips through CAF serialization") {
  test_config cfg;
  caf::actor_system sys{cfg};
  tensor_batch in{7, 2, 41, random_tensor({3, 5}, 1), tensor::zeros({3}, dtype::i32)};
  in.y.i32()[1] = 9;
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  step_report rep{3, 2.5f, 0.75f, 1e-3f, 16, 2048, 0.125};
  eval_report ev{1.25, 0.875, 10000};
  tensor undefined;
  REQUIRE(!sink(in, rep, ev, undefined));
  CHECK(buf.size() > size_t(15 * 4));

  tensor_batch out;
  step_report rep2;
  eval_report ev2;
  tensor undefined2 = tensor::zeros({1});
  caf::binary_deserializer source{sys, buf};
  REQUIRE(!source(out, rep2, ev2, undefined2));
  CHECK(out.step == 7);
  CHECK(out.micro == 2);
  CHECK(out.version == 41);
  REQUIRE(out.x.shape() == in.x.shape());
  CHECK(out.x.type() == dtype::f32);
  CHECK(out.x.storage_ptr() != in.x.storage_ptr());  // a new process would get new storage
  for (int64_t i = 0; i < in.x.numel(); ++i) CHECK(out.x.f32()[i] == in.x.f32()[i]);
  CHECK(out.y.type() == dtype::i32);
  CHECK(out.y.i32()[1] == 9);
  CHECK(rep2.step == 3);
  CHECK(rep2.loss == 2.5f);
  CHECK(rep2.tokens == 2048);
  CHECK(rep2.compute_s == 0.125);
  CHECK(ev2.accuracy == 0.875);
  CHECK(ev2.count == 10000);
  CHECK(!undefined2.defined());

  // The pipeline's messages.
  std::vector<char> buf2;
  caf::binary_serializer sink2{sys, buf2};
  pipe_msg pm{pipe_msg::gradient, 9, 3, 5, 2, random_tensor({2, 3}, 4)};
  stage_report sr;
  sr.stage = 1, sr.replica = 2, sr.step = 7, sr.ops = 16, sr.peak_stash = 3, sr.busy_s = 0.5, sr.loss_sum = 1.25;
  sr.grad_norm = 0.75, sr.peak_stash_bytes = 4096, sr.error = "stage 1 failed";
  REQUIRE(!sink2(pm, sr));
  pipe_msg pm2;
  stage_report sr2;
  caf::binary_deserializer source2{sys, buf2};
  REQUIRE(!source2(pm2, sr2));
  CHECK(pm2.kind == pipe_msg::gradient);
  CHECK(pm2.step == 9);
  CHECK(pm2.micro == 3);
  CHECK(pm2.vstage == 5);
  CHECK(pm2.version == 2);
  REQUIRE(pm2.t.shape() == pm.t.shape());
  for (int64_t i = 0; i < 6; ++i) CHECK(pm2.t.f32()[i] == pm.t.f32()[i]);
  CHECK(sr2.stage == 1);
  CHECK(sr2.replica == 2);
  CHECK(sr2.step == 7);
  CHECK(sr2.ops == 16);
  CHECK(sr2.peak_stash == 3);
  CHECK(sr2.busy_s == 0.5);
  CHECK(sr2.loss_sum == 1.25);
  CHECK(sr2.grad_norm == 0.75);
  CHECK(sr2.peak_stash_bytes == 4096);
  CHECK(sr2.error == "stage 1 failed");

  // The control plane's messages (troupe launch and its node agents).
  std::vector<char> buf3;
  caf::binary_serializer sink3{sys, buf3};
  node_hello nh{"10.0.0.2", 4242, 16, -1, std::string(32, 'f')};
  node_challenge nc{"n0nce", "pr00f"};
  rank_assignment ra{3, 4, "{\"name\": \"j\"}", "/jobs/j.json", {"--steps", "5"}, "tcp://10.0.0.1:29500", 99};
  REQUIRE(!sink3(nh, nc, ra));
  node_hello nh2;
  node_challenge nc2;
  rank_assignment ra2;
  caf::binary_deserializer source3{sys, buf3};
  REQUIRE(!source3(nh2, nc2, ra2));
  CHECK(nh2.host == "10.0.0.2");
  CHECK(nh2.pid == 4242);
  CHECK(nh2.cores == 16);
  CHECK(nh2.slot == -1);
  CHECK(nh2.nonce == nh.nonce);
  CHECK(nc2.nonce == "n0nce");
  CHECK(nc2.proof == "pr00f");
  CHECK(ra2.rank == 3);
  CHECK(ra2.world == 4);
  CHECK(ra2.spec == ra.spec);
  CHECK(ra2.path == "/jobs/j.json");
  CHECK(ra2.flags == ra.flags);
  CHECK(ra2.rendezvous == "tcp://10.0.0.1:29500");
  CHECK(ra2.group == 99);

  // A parameter shard's checkpoint copy (on its way to process 0's writer).
  checkpoint_shard ck;
  ck.tensors["params"] = random_tensor({5, 7}, 9);
  ck.tensors["optim.m"] = random_tensor({35}, 10);
  ck.texts["version"] = "8";
  ck.texts["params.layout"] = "w:5x7";
  std::vector<char> buf4;
  caf::binary_serializer sink4{sys, buf4};
  REQUIRE(!sink4(ck));
  checkpoint_shard ck2;
  caf::binary_deserializer source4{sys, buf4};
  REQUIRE(!source4(ck2));
  CHECK(ck2.texts == ck.texts);
  REQUIRE(ck2.tensors.size() == 2);
  for (const auto& [name, t] : ck.tensors) {
    const tensor& u = ck2.tensors.at(name);
    REQUIRE(u.shape() == t.shape());
    for (int64_t i = 0; i < t.numel(); ++i) CHECK(u.f32()[i] == t.f32()[i]);
  }

  // A shape whose size overflows is refused, not allocated.
  std::vector<char> huge;
  caf::binary_serializer huge_sink{sys, huge};
  uint8_t defined = 1, type = 0;
  shape_t shape{int64_t(1) << 31, int64_t(1) << 31, 4};
  REQUIRE(!huge_sink(caf::meta::type_name("tensor"), defined, type, shape));
  caf::binary_deserializer huge_source{sys, huge};
  tensor refused;
  CHECK(huge_source(refused));
  CHECK(!refused.defined());

  // A frame cut short is an error, not a crash.
  std::vector<char> cut(buf.begin(), buf.begin() + long(buf.size() / 2));
  caf::binary_deserializer short_source{sys, cut};
  tensor_batch partial;
  CHECK(short_source(partial));
}

TEST_CASE("messages: a tensor sent to another actor in the process is the same storage, not a copy") {
  test_config cfg;
  caf::actor_system sys{cfg};
  auto echo = sys.spawn([](caf::event_based_actor*) -> caf::behavior {
    return {[](const tensor_batch& b) {
      return std::make_tuple(uint64_t(reinterpret_cast<uintptr_t>(b.x.raw())),
                             uint64_t(reinterpret_cast<uintptr_t>(b.x.storage_ptr())));
    }};
  });
  tensor big = random_tensor({1024, 1024}, 3);  // 4 MiB: a copy would move its bytes
  auto data_ptr = uint64_t(reinterpret_cast<uintptr_t>(big.raw()));
  auto storage_ptr = uint64_t(reinterpret_cast<uintptr_t>(big.storage_ptr()));
  caf::scoped_actor self{sys};
  tensor_batch b{0, 0, 0, big, tensor{}};
  self->request(echo, caf::infinite, std::move(b))
      .receive(
          [&](uint64_t got_data, uint64_t got_storage) {
            CHECK(got_data == data_ptr);
            CHECK(got_storage == storage_ptr);
          },
          [&](const caf::error& err) { FAIL(sys.render(err)); });
  self->send_exit(echo, caf::exit_reason::user_shutdown);
}

TEST_CASE("run_job: a GPT job through the actors repeats bit for bit and matches the bare trainer") {
  coordinator_options quiet;
  quiet.quiet = true;
  for (uint32_t threads : {1u, 2u}) {
    CAPTURE(threads);
    auto a_spec = tiny_gpt_job("repeat_a" + std::to_string(threads), threads);
    auto b_spec = tiny_gpt_job("repeat_b" + std::to_string(threads), threads);
    std::remove(a_spec.train().metrics_file().c_str());
    std::remove(b_spec.train().metrics_file().c_str());
    job_outcome a = run_job(a_spec, quiet);
    job_outcome b = run_job(b_spec, quiet);
    auto la = step_lines(a_spec.train().metrics_file());
    auto lb = step_lines(b_spec.train().metrics_file());
    REQUIRE(la.size() == 12);
    CHECK(la == lb);
    CHECK(a.eval.loss == b.eval.loss);
    CHECK(a.sample == b.sample);
    CHECK(a.sample.size() == 16);
    CHECK(a.eval.count == 16);

    // The same job without actors: same losses, same evaluation.
    set_compute_threads(int(threads));
    auto data = load_training_data(a_spec);
    batch_source source(a_spec, data);
    trainer t(a_spec, 12);
    for (int s = 0; s < 12; ++s) {
      batch bt = source.next();
      float loss = t.train_step(bt.x, bt.y).loss;
      char want[64];
      std::snprintf(want, sizeof want, "\"loss\":%.6f", loss);
      CHECK(la[size_t(s)].find(want) != std::string::npos);
    }
    batch ev = source.eval_set();
    CHECK(t.evaluate(ev.x, ev.y, 4).loss == a.eval.loss);
  }
}

TEST_CASE("run_job: the MLP job learns Fashion-MNIST through the actors") {
  auto spec = parse_job_spec(R"({"name": "mlp_smoke",
    "model": {"mlp": {"widths": [784, 64, 10]}}, "data": {"dataset": "fashion_mnist"},
    "optimizer": {"sgd": {"lr": 0.1, "momentum": 0.9}},
    "train": {"batch_size": 64, "steps": 150, "metrics_file": "/tmp/troupe_test_mlp_smoke/metrics.jsonl"}})",
                             "mlp_smoke");
  coordinator_options quiet;
  quiet.quiet = true;
  job_outcome out = run_job(spec, quiet);
  CHECK(out.eval.count == 10000);
  CHECK(out.eval.accuracy > 0.70);  // chance is 0.10; 150 steps reach ~0.78
  CHECK(out.eval.loss < 0.9);
}

TEST_CASE("docs/getting-started.md: its example job parses and trains") {
  std::ifstream f(std::string(TROUPE_SOURCE_DIR) + "/docs/getting-started.md");
  REQUIRE(f);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string doc = ss.str();
  size_t at = doc.find("```json\n");
  REQUIRE(at != std::string::npos);
  at += 8;
  std::string json = doc.substr(at, doc.find("```", at) - at);
  proto::JobSpec spec = parse_job_spec(json, "docs/getting-started.md");
  CHECK(spec.name() == "my_first_job");
  // Shortened to a few steps: the point is that the example runs as written.
  spec.mutable_train()->clear_epochs();
  spec.mutable_train()->set_steps(30);
  spec.mutable_train()->set_metrics_file("/tmp/troupe_test_getting_started/metrics.jsonl");
  coordinator_options quiet;
  quiet.quiet = true;
  job_outcome out = run_job(spec, quiet);
  CHECK(out.eval.accuracy > 0.5);
}
