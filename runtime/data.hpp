#pragma once
// Data sets that ship with Debian, and seeded batching over them.
//
//   Fashion-MNIST  dataset-fashion-mnist: gzipped IDX files under
//                  /usr/share/datasets/fashion-mnist (60000 train, 10000 test, 28x28, 10 classes)
//   byte corpus    fortunes: plain-text files under /usr/share/games/fortunes, read as raw
//                  bytes (vocabulary 256) and split into train / validation
//
// Batching is a pure function of (seed, call count): the same seed gives the same batches
// on every machine, because every random draw comes from troupe::rng.
//
// B = batch, T = sequence length (context), N = examples in a data set.
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/rng.hpp"
#include "runtime/tensor.hpp"

namespace troupe {

struct image_set {
  tensor images;  // (N, rows*cols) f32, pixel / 255, so in [0, 1]
  tensor labels;  // (N) i32, in [0, classes)
  int rows = 0, cols = 0;
  int classes = 10;
  int64_t size() const { return labels.defined() ? labels.dim(0) : 0; }
};

// Reads {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz from `dir`. Throws input_error
// naming the file and what was expected vs found: missing file, wrong magic (2051 for
// images, 2049 for labels, big-endian), truncated data, image/label count mismatch, a
// label outside 0..9.
image_set load_fashion_mnist(const std::string& dir, bool train);

struct byte_corpus {
  std::vector<uint8_t> train, val;
  std::vector<std::string> files;  // the file names read, in the order concatenated
};

// Concatenates the regular files of `dir` sorted by name, skipping symlinks, *.dat (strfile
// indices), *.u8 and anything not a regular file. The first (1 - val_fraction) of the bytes
// (rounded down) is train, the rest validation. Throws input_error when `dir` is missing,
// holds no such file, or val_fraction is not in (0, 1).
byte_corpus load_byte_corpus(const std::string& dir, double val_fraction = 0.1);

// Full batches of `batch` examples in one pass over n examples; the last partial batch
// of every epoch is dropped, so every step sees exactly `batch` examples.
int64_t batches_per_epoch(int64_t n, int64_t batch);

// Shuffled passes over [0, n): each epoch is a fresh Fisher-Yates permutation drawn from
// troupe::rng seeded with (seed, epoch number), and batches are consecutive slices of it.
// When fewer than `batch` indices remain in an epoch they are dropped (never carried into
// the next epoch) and the next epoch starts, so epoch e's batches depend only on (seed, e).
class epoch_sampler {
 public:
  epoch_sampler(int64_t n, uint64_t seed);
  // Fills idx with the next `batch` indices (1 <= batch <= n; input_error otherwise).
  void next(int64_t batch, std::vector<int64_t>& idx);
  // The epoch (from 0) of the batch returned last; 0 before the first call.
  int64_t epoch() const { return epoch_; }
  // Indices of the current epoch already handed out.
  int64_t position() const { return pos_; }
  int64_t size() const { return n_; }
  // The permutation of the current epoch (for tests).
  const std::vector<int64_t>& permutation() const { return perm_; }

 private:
  void shuffle();

  int64_t n_;
  uint64_t seed_;
  int64_t epoch_ = 0;
  int64_t pos_ = 0;
  std::vector<int64_t> perm_;
};

struct batch {
  tensor x;
  tensor y;
};

// x (B, rows*cols) f32, y (B) i32: the examples idx[0..B) of `set`, in that order.
batch make_image_batch(const image_set& set, const std::vector<int64_t>& idx);

// Start offsets of training windows, uniform in [0, corpus_size - T - 1], so that a window
// of T inputs and its T shifted targets fit. Throws input_error when corpus_size < T + 1.
class window_sampler {
 public:
  window_sampler(int64_t corpus_size, int T, uint64_t seed);
  void next(int64_t batch, std::vector<int64_t>& starts);

 private:
  int64_t positions_;  // corpus_size - T: the number of valid start offsets
  rng rng_;
};

// x (B,T) i32 = corpus[s .. s+T), y (B,T) i32 = corpus[s+1 .. s+T+1) for each start s.
batch make_token_batch(const std::vector<uint8_t>& corpus, const std::vector<int64_t>& starts, int T);

// `count` evenly spaced start offsets from 0 to corpus_size - T - 1 (both ends included when
// count >= 2): a fixed validation set, no randomness. Throws input_error when the corpus is
// shorter than T + 1 bytes.
std::vector<int64_t> eval_windows(int64_t corpus_size, int T, int64_t count);

}  // namespace troupe
