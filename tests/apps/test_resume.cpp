// troupe train with train.checkpoint_every and --resume (the 1 x 1 job, a pipeline, and a
// synchronous parameter-shard job in one process and over 2): a job stopped after step 8 and
// continued gives the uninterrupted run's steps 9-12 and its final parameters and
// optimizer state bit for bit; a torn newest checkpoint is skipped with a message and the
// one before used; bad resumes are clear errors.
#include <doctest/doctest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/checkpoint.hpp"
#include "tests/support/processes.hpp"

using namespace troupe;
using namespace troupe::testing;
namespace fs = std::filesystem;

namespace {

// The MLP job with a cosine schedule (the learning rate depends on the step: a resume
// that lost its place would show), checkpoints every 4 steps into `ckpt`.
std::string job(const std::string& name, const std::string& ckpt, const std::string& extra = "") {
  const std::string path = "/tmp/troupe_resume_" + name + ".json";
  std::ofstream(path) << R"({"name": ")" << name << R"(",
 "model": {"mlp": {"widths": [784, 64, 10]}}, "data": {"dataset": "fashion_mnist"},
 "optimizer": {"adamw": {"lr": 3e-3, "weight_decay": 0.01}, "lr_schedule": "cosine", "warmup_steps": 2},
 "train": {"batch_size": 32, "steps": 12, "threads": 2, "metrics_file": "/tmp/troupe_resume_)"
                      << name << R"(.jsonl", "checkpoint_every": 4, "checkpoint_dir": ")" << ckpt
                      << R"(", "checkpoint_keep": 0})" << extra << "}";
  fs::remove("/tmp/troupe_resume_" + name + ".jsonl");
  fs::remove_all(ckpt);
  return path;
}

std::vector<std::string> step_lines(const std::string& name) {
  std::ifstream in("/tmp/troupe_resume_" + name + ".jsonl");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (line.find("\"event\":\"step\"") != std::string::npos) out.push_back(line.substr(0, line.find(",\"samples\"")));
  return out;
}

void check_bits(const checkpoint_shard& a, const checkpoint_shard& b) {
  for (const char* name : {"params", "optim.m", "optim.v"}) {
    CAPTURE(name);
    REQUIRE(a.tensors.count(name) == 1);
    REQUIRE(b.tensors.count(name) == 1);
    const tensor &x = a.tensors.at(name), &y = b.tensors.at(name);
    REQUIRE(x.bytes() == y.bytes());
    CHECK(std::memcmp(x.raw(), y.raw(), x.bytes()) == 0);
  }
  CHECK(a.texts.at("optim.steps") == b.texts.at("optim.steps"));
  CHECK(a.texts.at("step") == b.texts.at("step"));
}

}  // namespace

TEST_CASE("resume: a job continued from its step-8 checkpoint equals the uninterrupted run bit for bit") {
  const std::string a_dir = "/tmp/troupe_resume_a_ckpt", b_dir = "/tmp/troupe_resume_b_ckpt";
  auto r = run("train " + job("a", a_dir) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  const auto a = load_latest_checkpoint(a_dir);
  REQUIRE(a.step == 12);
  for (const char* version : {"step-000000000004", "step-000000000008", "step-000000000012"})
    CHECK(fs::exists(fs::path(a_dir) / version / "MANIFEST"));
  r = run("train " + job("b", b_dir) + " --quiet --resume " + a_dir + "/step-000000000008");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  CHECK(r.output.find("resume: from " + a_dir + "/step-000000000008, after step 8") != std::string::npos);
  const auto la = step_lines("a"), lb = step_lines("b");
  REQUIRE(la.size() == 12);
  REQUIRE(lb.size() == 4);  // steps 9..12 only
  for (size_t k = 0; k < 4; ++k) CHECK(lb[k] == la[8 + k]);
  const auto b = load_latest_checkpoint(b_dir);
  REQUIRE(b.step == 12);
  check_bits(a.shards.at("device"), b.shards.at("device"));

  // Tear the newest of a's checkpoints: --resume DIR skips it, says why, and uses step 8.
  const fs::path torn = fs::path(a_dir) / "step-000000000012" / "device";
  fs::resize_file(torn, fs::file_size(torn) / 3);
  r = run("train " + job("c", "/tmp/troupe_resume_c_ckpt") + " --quiet --resume " + a_dir);
  REQUIRE_MESSAGE(r.code == 0, r.output);
  CHECK(r.output.find("troupe: skipped a checkpoint: " + torn.string()) != std::string::npos);
  CHECK(r.output.find("(torn or truncated)") != std::string::npos);
  CHECK(r.output.find("after step 8") != std::string::npos);
  const auto lc = step_lines("c");
  REQUIRE(lc.size() == 4);
  for (size_t k = 0; k < 4; ++k) CHECK(lc[k] == la[8 + k]);
  check_bits(a.shards.at("device"), load_latest_checkpoint("/tmp/troupe_resume_c_ckpt").shards.at("device"));
  for (const std::string& d : {a_dir, b_dir, std::string("/tmp/troupe_resume_c_ckpt")}) fs::remove_all(d);
}

TEST_CASE("resume: a synchronous parameter-shard job continued from its step-8 checkpoint, in one process and over 2, "
          "equals the uninterrupted run bit for bit") {
  const std::string shards = R"(, "policy": {"name": "sync", "workers": 2, "shards": 2})";
  const std::string p_dir = "/tmp/troupe_resume_p_ckpt";
  auto r = run("train " + job("p", p_dir, shards) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  const auto p = load_latest_checkpoint(p_dir);
  REQUIRE(p.step == 12);
  REQUIRE(p.shards.size() == 2);
  const auto lp = step_lines("p");
  REQUIRE(lp.size() == 12);
  // The cosine schedule's clock travels with the shards: a resume that lost it would show
  // in the lr of every later line.
  for (const std::string& how : {std::string("train"), std::string("launch --nproc 2")}) {
    CAPTURE(how);
    const std::string q_dir = "/tmp/troupe_resume_q_ckpt";
    r = run(how + " " + job("q", q_dir, shards) + " --quiet --resume " + p_dir + "/step-000000000008");
    REQUIRE_MESSAGE(r.code == 0, r.output);
    const auto lq = step_lines("q");
    REQUIRE(lq.size() == 4);  // steps 9..12 only
    for (size_t k = 0; k < 4; ++k) CHECK(lq[k] == lp[8 + k]);
    const auto q = load_latest_checkpoint(q_dir);
    REQUIRE(q.step == 12);
    for (const char* shard : {"shard-0", "shard-1"})
      for (const char* name : {"params", "optim.m", "optim.v"}) {
        CAPTURE(shard);
        CAPTURE(name);
        const tensor &x = p.shards.at(shard).tensors.at(name), &y = q.shards.at(shard).tensors.at(name);
        REQUIRE(x.bytes() == y.bytes());
        CHECK(std::memcmp(x.raw(), y.raw(), x.bytes()) == 0);
        CHECK(q.shards.at(shard).texts.at("applied_samples") == p.shards.at(shard).texts.at("applied_samples"));
      }
    fs::remove_all(q_dir);
  }
  fs::remove_all(p_dir);
}

TEST_CASE("resume: a missing or empty directory, another model's checkpoint, a finished one and a pipeline job are "
          "clear errors") {
  const std::string dir = "/tmp/troupe_resume_e_ckpt";
  auto r = run("train " + job("e", dir) + " --quiet --resume /tmp/troupe_resume_nowhere");
  CHECK(r.code == 1);
  CHECK(r.output.find("--resume /tmp/troupe_resume_nowhere: no such checkpoint directory") != std::string::npos);
  fs::create_directories("/tmp/troupe_resume_empty");
  r = run("train " + job("e", dir) + " --quiet --resume /tmp/troupe_resume_empty");
  CHECK(r.code == 1);
  CHECK(r.output.find("no checkpoint in it reads cleanly (it holds none)") != std::string::npos);
  fs::remove_all("/tmp/troupe_resume_empty");
  r = run("train " + job("e", dir) + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  r = run("train " + job("f", "/tmp/troupe_resume_f_ckpt") + " --quiet --resume " + dir);  // job() cleared nothing of e's
  CHECK(r.code == 1);
  CHECK(r.output.find("the checkpoint is at step 12, the job has 12 steps: nothing is left to train") != std::string::npos);
  // Another model (wider hidden layer): refused before training starts.
  std::string wide = job("g", "/tmp/troupe_resume_g_ckpt");
  {
    std::ifstream in(wide);
    std::stringstream text;
    text << in.rdbuf();
    std::string t = text.str();
    t.replace(t.find("[784, 64, 10]"), 13, "[784, 32, 10]");
    std::ofstream(wide) << t;
  }
  r = run("train " + wide + " --quiet --resume " + dir + "/step-000000000004");
  CHECK(r.code == 1);
  CHECK(r.output.find("laid out for another model than this job's") != std::string::npos);
  r = run("train " + job("h", "/tmp/troupe_resume_h_ckpt", R"(, "policy": {"name": "downpour", "workers": 2})") +
          " --quiet");
  CHECK(r.code == 1);
  CHECK(r.output.find("train.checkpoint_every: checkpoints of parameter-shard jobs take the synchronous rule "
                      "(policy.name \"sync\"") != std::string::npos);
  CHECK(r.output.find("got \"downpour\"") != std::string::npos);
  // A synchronous parameter-shard job cannot resume from a 1 x 1 job's checkpoint.
  r = run("train " + job("h", "/tmp/troupe_resume_h_ckpt", R"(, "policy": {"name": "sync", "workers": 2})") +
          " --quiet --resume " + dir);
  CHECK(r.code == 1);
  CHECK(r.output.find("the checkpoint has no \"shard-0\" for this job of 1 parameter shard (it is not a "
                      "parameter-shard job's)") != std::string::npos);
  // A job of 1 stage x 1 replica's checkpoint for a pipeline job, and back.
  const std::string pipe_dir = "/tmp/troupe_resume_i_ckpt";
  r = run("train " + job("i", pipe_dir, R"(, "parallel": {"stages": 2, "micro_batches": 2})") + " --quiet --resume " + dir);
  CHECK(r.code == 1);
  CHECK(r.output.find("the checkpoint has no \"stage-0\" shard for this job of 2 stages (it is a job's of 1 stage x 1 "
                      "replica)") != std::string::npos);
  r = run("train " + job("i", pipe_dir, R"(, "parallel": {"stages": 2, "micro_batches": 2})") + " --quiet");
  REQUIRE_MESSAGE(r.code == 0, r.output);
  r = run("train " + job("j", "/tmp/troupe_resume_j_ckpt") + " --quiet --resume " + pipe_dir + "/step-000000000004");
  CHECK(r.code == 1);
  CHECK(r.output.find("no \"device\" shard (a pipeline job's: it has stage-N shards") != std::string::npos);
  r = run("train " + job("j", "/tmp/troupe_resume_j_ckpt", R"(, "parallel": {"stages": 3, "micro_batches": 2})") +
          " --quiet --resume " + pipe_dir + "/step-000000000004");
  CHECK(r.code == 1);
  CHECK(r.output.find("no \"stage-2\" shard for this job of 3 stages") != std::string::npos);
  for (const std::string& d : {dir, pipe_dir, std::string("/tmp/troupe_resume_j_ckpt")}) fs::remove_all(d);
}

TEST_CASE("resume: a pipeline job (stages x replicas in one process) continued from its step-8 checkpoint equals the "
          "uninterrupted run bit for bit") {
  // The MLP as 2 stages x 2 replicas with 1F1B, and the GPT (its embedding tied between
  // the first and the last stage) as 2 stages with the zero-bubble schedule.
  const std::string gpt = R"(, "model": {"gpt": {"n_layer": 2, "n_head": 2, "d_model": 32, "context": 16}},
    "data": {"dataset": "fortunes"}, "parallel": {"stages": 2, "micro_batches": 2, "schedule": "zb-h1"})";
  for (const std::string& extra : {std::string(R"(, "parallel": {"stages": 2, "replicas": 2, "micro_batches": 2})"), gpt}) {
    CAPTURE(extra);
    const std::string a_dir = "/tmp/troupe_resume_pa_ckpt", b_dir = "/tmp/troupe_resume_pb_ckpt";
    auto with = [&](const std::string& name, const std::string& dir) {
      std::string path = job(name, dir);
      std::ifstream in(path);
      std::stringstream text;
      text << in.rdbuf();
      std::string t = text.str();
      if (extra == gpt) {  // the GPT replaces the MLP's model and data
        t.replace(t.find(R"("model")"), t.find(R"("optimizer")") - t.find(R"("model")"), "");
        t.replace(t.find(R"("steps": 12)"), 0, R"("sample_tokens": 0, )");
      }
      t.insert(t.rfind('}'), extra);
      std::ofstream(path) << t;
      return path;
    };
    auto r = run("train " + with("pa", a_dir) + " --quiet");
    REQUIRE_MESSAGE(r.code == 0, r.output);
    const auto a = load_latest_checkpoint(a_dir);
    REQUIRE(a.step == 12);
    REQUIRE(a.shards.count("stage-0") == 1);
    REQUIRE(a.shards.count("stage-1") == 1);
    r = run("train " + with("pb", b_dir) + " --quiet --resume " + a_dir + "/step-000000000008");
    REQUIRE_MESSAGE(r.code == 0, r.output);
    CHECK(r.output.find("after step 8") != std::string::npos);
    const auto la = step_lines("pa"), lb = step_lines("pb");
    REQUIRE(la.size() == 12);
    REQUIRE(lb.size() == 4);
    for (size_t k = 0; k < 4; ++k) CHECK(lb[k] == la[8 + k]);
    const auto b = load_latest_checkpoint(b_dir);
    REQUIRE(b.step == 12);
    for (const char* st : {"stage-0", "stage-1"}) {
      CAPTURE(st);
      check_bits(a.shards.at(st), b.shards.at(st));
    }
    for (const std::string& d : {a_dir, b_dir}) fs::remove_all(d);
  }
}
