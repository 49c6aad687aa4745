#pragma once
// Checkpoints: what an actor's state is on disk, and how a set of them becomes one
// version of a job's checkpoint.
//
// A shard (one actor's state: its parameter arena, optimizer state, counters, its data
// sampler's position...) is one file of named tensors and named strings:
//   "TRPCKPT\0" | u32 version (1) | u32 entries | entries... | u32 crc32 of all before | "TRPCKEND"
//   entry: u32 name bytes | name | u8 kind (0 tensor, 1 text) | tensor: u8 dtype, u8 rank,
//          i64 dims[rank] | u64 payload bytes | payload | u32 crc32 of the entry so far
// little-endian, as the machines are. A version of a job's checkpoint is a directory
// DIR/step-<12 digits>/ with one file per shard and a MANIFEST written last: the shard
// names, their sizes and checksums, and the step. Nothing is ever written in place:
// each file goes to a temp name, is fsynced, renamed, and the directory fsynced, so a crash
// leaves the previous version whole and the new one either whole or without a manifest.
//
// Reading checks everything (magic, version, every length against what is left, dims
// against the payload, every checksum) and throws checkpoint_error naming the file, the
// entry and what was wrong; load_latest falls back to the newest version that reads
// cleanly and says which ones it skipped and why.
//
// Two phases (checkpoint_writer): the caller copies its state into a shard (in memory, at
// a step boundary) and hands it over; a background thread persists it while training goes on.
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "runtime/check.hpp"
#include "runtime/tensor.hpp"

namespace troupe {

class checkpoint_error : public input_error {
 public:
  using input_error::input_error;
};

struct checkpoint_shard {
  std::map<std::string, tensor> tensors;
  std::map<std::string, std::string> texts;
};

// Puts a copy of `t` in s.tensors[name]: into the tensor already there when it has the
// same shape and type (a reclaimed shard: no allocation, no fresh pages), else a clone.
void copy_entry(checkpoint_shard& s, const std::string& name, const tensor& t);

// The text entry `key` as a count (>= 0); checkpoint_error when it is missing or is not one.
int64_t checkpoint_count(const checkpoint_shard& s, const std::string& key);

// The bytes of a shard file, and back. parse throws checkpoint_error naming `origin`.
std::vector<uint8_t> encode_shard(const checkpoint_shard& s);
checkpoint_shard parse_shard(const uint8_t* data, size_t size, const std::string& origin);

// One file, atomically (temp name, fsync, rename, fsync of the directory).
void write_file_atomically(const std::filesystem::path& path, const std::vector<uint8_t>& bytes);
checkpoint_shard read_shard_file(const std::filesystem::path& path);

struct checkpoint_version {
  int64_t step = -1;  // -1: none found
  std::filesystem::path dir;
  std::map<std::string, checkpoint_shard> shards;
  std::vector<std::string> skipped;  // newer versions that did not read, each with why
};

// Writes DIR/step-<step>/ with one file per shard and its MANIFEST, then keeps only the
// newest `keep` versions (0: all). Shard names: letters, digits, '_', '-', '.'.
std::filesystem::path commit_checkpoint(const std::filesystem::path& dir, int64_t step,
                                        const std::map<std::string, checkpoint_shard>& shards, int keep);
// One version directory (DIR/step-N), checked as load_latest_checkpoint checks each;
// checkpoint_error naming what is wrong.
checkpoint_version load_checkpoint_version(const std::filesystem::path& version_dir);
// The newest version under DIR whose manifest and every shard read cleanly (step -1 if
// none does); the ones it passed over are in `skipped`.
checkpoint_version load_latest_checkpoint(const std::filesystem::path& dir);

// The background persister of two-phase checkpoints.
class checkpoint_writer {
 public:
  checkpoint_writer(std::filesystem::path dir, int keep);
  ~checkpoint_writer();  // persists what was submitted, then stops
  checkpoint_writer(const checkpoint_writer&) = delete;
  checkpoint_writer& operator=(const checkpoint_writer&) = delete;
  // Phase 2 of `step`: the shards (already copies) are written in the background.
  void submit(int64_t step, std::map<std::string, checkpoint_shard> shards);
  // Waits until everything submitted is on disk; rethrows the first write error.
  void flush();
  int64_t last_committed() const;
  // Shards already on disk, handed back for reuse (copy_entry fills them without
  // allocating); empty when none is free.
  std::map<std::string, checkpoint_shard> reclaim();

 private:
  void run();
  std::filesystem::path dir_;
  int keep_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<int64_t, std::map<std::string, checkpoint_shard>>> queue_;
  bool busy_ = false, stop_ = false;
  int64_t last_ = -1;
  std::string error_;
  std::deque<std::map<std::string, checkpoint_shard>> spent_;  // written, for reclaim()
  std::thread thread_;
};

}  // namespace troupe
