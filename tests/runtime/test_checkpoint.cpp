// Checkpoints (runtime/checkpoint.hpp): a shard round-trips to the bit; every truncation
// and every flipped bit of a shard file is a checkpoint_error, never a crash; a committed
// version loads; a torn, corrupt or uncommitted newest version is skipped with its reason
// and the previous one used; old versions are pruned; the background writer persists what
// it was handed and reports a write error.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "runtime/checkpoint.hpp"
#include "runtime/rng.hpp"

using namespace troupe;
namespace fs = std::filesystem;

namespace {

checkpoint_shard sample_shard(uint64_t seed) {
  rng r(seed);
  checkpoint_shard s;
  tensor w = tensor::empty({3, 5});
  for (int64_t i = 0; i < w.numel(); ++i) w.f32()[i] = float(r.normal());
  tensor ids = tensor::empty({4}, dtype::i32);
  for (int64_t i = 0; i < 4; ++i) ids.i32()[i] = int32_t(r.next_u64() % 1000) - 500;
  s.tensors["params"] = w;
  s.tensors["sampler.perm"] = ids;
  s.tensors["empty"] = tensor::empty({0, 7});
  s.tensors["scalar"] = tensor::zeros({});
  s.texts["step"] = std::to_string(seed);
  s.texts["note"] = std::string("binary\0text", 11);
  return s;
}

void check_same(const checkpoint_shard& a, const checkpoint_shard& b) {
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    CAPTURE(name);
    REQUIRE(b.tensors.count(name) == 1);
    const tensor& u = b.tensors.at(name);
    CHECK(u.type() == t.type());
    CHECK(u.shape() == t.shape());
    REQUIRE(u.bytes() == t.bytes());
    CHECK(std::memcmp(u.raw(), t.raw(), t.bytes()) == 0);
  }
  CHECK(a.texts == b.texts);
}

std::string error_of(const std::vector<uint8_t>& bytes) {
  try {
    parse_shard(bytes.data(), bytes.size(), "shard");
  } catch (const checkpoint_error& e) {
    return e.what();
  }
  return "";
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("troupe_ckpt_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

}  // namespace

TEST_CASE("checkpoint: a shard round-trips to the bit, and every truncation and flipped bit is a clear error") {
  const checkpoint_shard s = sample_shard(7);
  const auto bytes = encode_shard(s);
  check_same(s, parse_shard(bytes.data(), bytes.size(), "shard"));
  CHECK(encode_shard(parse_shard(bytes.data(), bytes.size(), "shard")) == bytes);
  // Every truncation.
  for (size_t n = 0; n < bytes.size(); ++n) {
    CAPTURE(n);
    std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + long(n));
    CHECK(error_of(cut).rfind("shard: ", 0) == 0);
  }
  CHECK(error_of(std::vector<uint8_t>(bytes.begin(), bytes.begin() + long(bytes.size() / 2))).find("(truncated?)") !=
        std::string::npos);
  // A flipped bit at random places, and one in each byte of the header.
  rng r(11);
  for (int k = 0; k < 400; ++k) {
    auto bad = bytes;
    const size_t at = k < 24 ? size_t(k) : size_t(r.next_u64() % bytes.size());
    bad[at] ^= uint8_t(1u << (r.next_u64() % 8));
    CAPTURE(at);
    CHECK(!error_of(bad).empty());
  }
  // Bytes after the end, and a version from the future.
  auto longer = bytes;
  longer.push_back(0);
  CHECK(error_of(longer) == "shard: 1 bytes after the end marker (the file is corrupt)");
  auto future = bytes;
  future[8] = 9;
  CHECK(error_of(future) == "shard: format version 9, this build reads version 1");
  CHECK(error_of({'n', 'o', 'p', 'e', 0, 0, 0, 0, 0, 0, 0, 0}) ==
        "shard: not a troupe checkpoint shard (expected the magic \"TRPCKPT\")");
}

TEST_CASE("checkpoint: the newest committed version loads, a torn or corrupt or uncommitted one is skipped with why") {
  const fs::path dir = fresh_dir("versions");
  for (int64_t step : {10, 20, 30})
    commit_checkpoint(dir, step, {{"device", sample_shard(uint64_t(step))}, {"feeder", sample_shard(1)}}, 0);
  auto v = load_latest_checkpoint(dir);
  CHECK(v.step == 30);
  CHECK(v.skipped.empty());
  REQUIRE(v.shards.count("device") == 1);
  check_same(v.shards["device"], sample_shard(30));
  for (const auto& e : fs::recursive_directory_iterator(dir))
    CHECK(e.path().extension() != ".tmp");  // nothing half-written left behind

  // Truncate step 30's shard at a random byte: torn. Step 20 is used, and the reason named.
  const fs::path shard30 = dir / "step-000000000030" / "device";
  rng r(3);
  fs::resize_file(shard30, size_t(r.next_u64() % fs::file_size(shard30)));
  v = load_latest_checkpoint(dir);
  CHECK(v.step == 20);
  REQUIRE(v.skipped.size() == 1);
  CHECK(v.skipped[0].find("step-000000000030/device") != std::string::npos);
  CHECK(v.skipped[0].find("(torn or truncated)") != std::string::npos);

  // Flip one bit of step 20's feeder shard: corrupt; step 10 is used.
  const fs::path shard20 = dir / "step-000000000020" / "feeder";
  {
    std::fstream f(shard20, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(40);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(40);
    f.write(&c, 1);
  }
  v = load_latest_checkpoint(dir);
  CHECK(v.step == 10);
  REQUIRE(v.skipped.size() == 2);
  CHECK(v.skipped[1].find("checksum differs from the manifest's (corrupt)") != std::string::npos);
  check_same(v.shards["device"], sample_shard(10));

  // A version whose manifest never got written (a crash mid-checkpoint) is not one.
  fs::create_directories(dir / "step-000000000040");
  std::ofstream(dir / "step-000000000040" / "device") << "half";
  v = load_latest_checkpoint(dir);
  CHECK(v.step == 10);
  CHECK(v.skipped[0].find("no MANIFEST (the version was never committed)") != std::string::npos);

  // keep = 2 prunes the oldest.
  commit_checkpoint(dir, 50, {{"device", sample_shard(50)}}, 2);
  int versions = 0;
  for (const auto& e : fs::directory_iterator(dir)) versions += e.is_directory();
  CHECK(versions == 2);
  CHECK(load_latest_checkpoint(dir).step == 50);
  CHECK(load_latest_checkpoint(dir / "nothing-here").step == -1);
  CHECK_THROWS_WITH_AS(commit_checkpoint(dir, 60, {{"../escape", sample_shard(1)}}, 0),
                       "checkpoint: shard name \"../escape\": expected letters, digits, '_', '-', '.'", checkpoint_error);
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: the background writer persists each submitted version and reports a failed write") {
  const fs::path dir = fresh_dir("writer");
  {
    checkpoint_writer w(dir, 2);
    for (int64_t step = 1; step <= 3; ++step) w.submit(step, {{"device", sample_shard(uint64_t(step))}});
    w.flush();
    CHECK(w.last_committed() == 3);
  }
  const auto v = load_latest_checkpoint(dir);
  CHECK(v.step == 3);
  check_same(v.shards.at("device"), sample_shard(3));
  // A directory that cannot be written (a file is in its way): the error comes back from flush.
  const fs::path blocked = fresh_dir("blocked");
  std::ofstream(blocked) << "a file, not a directory";
  {
    checkpoint_writer w(blocked / "sub", 0);
    w.submit(1, {{"device", sample_shard(1)}});
    CHECK_THROWS_AS(w.flush(), checkpoint_error);
  }
  fs::remove_all(dir);
  fs::remove(blocked);
}
