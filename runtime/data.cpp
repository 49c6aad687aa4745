#include "runtime/data.hpp"

#include <zlib.h>  // gzopen / gzread: the IDX files ship gzipped

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace troupe {

namespace fs = std::filesystem;

namespace {

constexpr uint32_t idx_images_magic = 2051;  // 0x00000803: u8 data, 3 dimensions
constexpr uint32_t idx_labels_magic = 2049;  // 0x00000801: u8 data, 1 dimension

// The whole decompressed content of a gzip file (a plain file is read as is, as zlib does).
std::vector<uint8_t> read_gz(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw input_error(detail::cat(path, ": cannot read: ", fs::exists(path, ec) ? "not a regular file" : "no such file",
                                  " (Fashion-MNIST ships in Debian's dataset-fashion-mnist package)"));
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw input_error(detail::cat(path, ": cannot open: ", std::strerror(errno)));
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  for (;;) {
    int n = gzread(f, chunk.data(), unsigned(chunk.size()));
    if (n < 0) {
      int code = 0;
      std::string why = gzerror(f, &code);
      gzclose(f);
      throw input_error(detail::cat(path, ": corrupt or truncated gzip data after ", out.size(), " bytes: ", why));
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  // gzread returns 0 both at a clean end and when the compressed stream stops early.
  int code = 0;
  const char* why = gzerror(f, &code);
  std::string msg = why ? why : "";
  gzclose(f);
  if (code != Z_OK && code != Z_STREAM_END)
    throw input_error(detail::cat(path, ": corrupt or truncated gzip data after ", out.size(), " bytes: ", msg));
  return out;
}

uint32_t be32(const std::vector<uint8_t>& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | uint32_t(b[at + 3]);
}

// Checks the IDX header of `bytes` (magic, then `dims` big-endian u32 sizes) and that
// the data after it is exactly the product of the sizes. Returns the sizes.
std::vector<uint32_t> idx_header(const std::vector<uint8_t>& bytes, const std::string& path, uint32_t magic,
                                 int dims) {
  const size_t header = 4 + 4 * size_t(dims);
  if (bytes.size() < header)
    throw input_error(detail::cat(path, ": truncated IDX header: expected ", header, " bytes, found ", bytes.size()));
  const uint32_t found = be32(bytes, 0);
  if (found != magic)
    throw input_error(detail::cat(path, ": wrong IDX magic: expected ", magic, ", found ", found,
                                  " (is this the right file?)"));
  std::vector<uint32_t> sizes;
  unsigned __int128 want = 1;  // three 32-bit sizes multiply to at most 2^96: no overflow
  for (int d = 0; d < dims; ++d) {
    sizes.push_back(be32(bytes, 4 + 4 * size_t(d)));
    want *= sizes.back();
  }
  const uint64_t have = bytes.size() - header;
  if (have < want)
    throw input_error(detail::cat(path, ": truncated data: header promises ",
                                  want > UINT64_MAX ? std::string("more than 2^64") : std::to_string(uint64_t(want)),
                                  " bytes, found ", have));
  if (have > want)
    throw input_error(detail::cat(path, ": unexpected trailing data: header promises ", uint64_t(want),
                                  " bytes, found ", have));
  return sizes;
}

}  // namespace

image_set load_fashion_mnist(const std::string& dir, bool train) {
  const std::string prefix = (fs::path(dir) / (train ? "train" : "t10k")).string();
  const std::string images_path = prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = prefix + "-labels-idx1-ubyte.gz";

  const std::vector<uint8_t> ib = read_gz(images_path);
  const std::vector<uint32_t> is = idx_header(ib, images_path, idx_images_magic, 3);
  const std::vector<uint8_t> lb = read_gz(labels_path);
  const std::vector<uint32_t> ls = idx_header(lb, labels_path, idx_labels_magic, 1);
  if (is[0] != ls[0])
    throw input_error(detail::cat(labels_path, ": holds ", ls[0], " labels but ", images_path, " holds ", is[0],
                                  " images: expected the same count"));
  if (is[1] == 0 || is[2] == 0)
    throw input_error(detail::cat(images_path, ": image size ", is[1], "x", is[2], ": expected both sizes >= 1"));

  image_set set;
  set.rows = int(is[1]);
  set.cols = int(is[2]);
  const int64_t n = is[0], pixels = int64_t(is[1]) * is[2];
  set.images = tensor::zeros({n, pixels}, dtype::f32);
  set.labels = tensor::zeros({n}, dtype::i32);
  float* x = set.images.f32();
  const uint8_t* src = ib.data() + 16;
  // Divide (not multiply by 1/255) so pixels match torchvision's ToTensor bit for bit.
  for (int64_t i = 0; i < n * pixels; ++i) x[i] = float(src[i]) / 255.0f;
  int32_t* y = set.labels.i32();
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t label = lb[8 + size_t(i)];
    if (label >= set.classes)
      throw input_error(detail::cat(labels_path, ": label ", int(label), " at index ", i, ": expected 0..",
                                    set.classes - 1));
    y[i] = label;
  }
  return set;
}

byte_corpus load_byte_corpus(const std::string& dir, double val_fraction) {
  if (!(val_fraction > 0.0 && val_fraction < 1.0))
    throw input_error(detail::cat(dir, ": validation fraction ", val_fraction, ": expected a number in (0, 1)"));
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw input_error(detail::cat(dir, ": cannot read corpus: ", fs::exists(dir, ec) ? "not a directory" : "no such directory",
                                  " (the fortune files ship in Debian's fortunes package)"));

  byte_corpus corpus;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    // symlink_status: a symlink is skipped, never followed (fortunes has x.u8 -> x).
    if (!fs::is_regular_file(e.symlink_status())) continue;
    const std::string ext = e.path().extension().string();
    if (ext == ".dat" || ext == ".u8") continue;
    corpus.files.push_back(e.path().filename().string());
  }
  if (ec) throw input_error(detail::cat(dir, ": cannot list corpus directory: ", ec.message()));
  std::sort(corpus.files.begin(), corpus.files.end());

  std::vector<uint8_t> all;
  for (const std::string& name : corpus.files) {
    const std::string path = (fs::path(dir) / name).string();
    std::ifstream in(path, std::ios::binary);
    if (!in) throw input_error(detail::cat(path, ": cannot read: ", std::strerror(errno)));
    all.insert(all.end(), std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (all.empty())
    throw input_error(detail::cat(dir, ": corpus is empty: expected regular text files (not *.dat, *.u8 or symlinks), found ",
                                  corpus.files.size(), " files with 0 bytes in all"));

  const size_t n_train = size_t(double(all.size()) * (1.0 - val_fraction));
  corpus.train.assign(all.begin(), all.begin() + ptrdiff_t(n_train));
  corpus.val.assign(all.begin() + ptrdiff_t(n_train), all.end());
  return corpus;
}

int64_t batches_per_epoch(int64_t n, int64_t batch) {
  TROUPE_CHECK(n >= 0 && batch >= 1, "n=", n, " batch=", batch);
  return n / batch;
}

epoch_sampler::epoch_sampler(int64_t n, uint64_t seed) : n_(n), seed_(seed) {
  if (n < 1) throw input_error(detail::cat("data set has ", n, " examples: expected at least 1"));
  shuffle();
}

void epoch_sampler::shuffle() {
  perm_.resize(size_t(n_));
  for (int64_t i = 0; i < n_; ++i) perm_[size_t(i)] = i;
  // One stream per epoch: the odd constant spreads (seed, epoch) pairs far apart in
  // splitmix64's state space, so epochs do not share draws.
  rng r(seed_ ^ (0xd1b54a32d192ed03ull * uint64_t(epoch_ + 1)));
  for (int64_t i = n_ - 1; i > 0; --i) {
    const int64_t j = int64_t(r.below(uint64_t(i) + 1));
    std::swap(perm_[size_t(i)], perm_[size_t(j)]);
  }
}

void epoch_sampler::next(int64_t batch, std::vector<int64_t>& idx) {
  if (batch < 1 || batch > n_)
    throw input_error(detail::cat("batch size ", batch, ": expected 1..", n_, " (the data set has ", n_, " examples)"));
  if (pos_ + batch > n_) {  // drop the partial tail; start the next epoch
    ++epoch_;
    pos_ = 0;
    shuffle();
  }
  idx.assign(perm_.begin() + pos_, perm_.begin() + pos_ + batch);
  pos_ += batch;
}

batch make_image_batch(const image_set& set, const std::vector<int64_t>& idx) {
  const int64_t B = int64_t(idx.size()), D = int64_t(set.rows) * set.cols, N = set.size();
  TROUPE_CHECK(set.images.defined() && set.images.dim(1) == D, "image set not loaded or wrong shape");
  batch b{tensor::zeros({B, D}, dtype::f32), tensor::zeros({B}, dtype::i32)};
  const float* src = set.images.f32();
  const int32_t* labels = set.labels.i32();
  float* x = b.x.f32();
  int32_t* y = b.y.i32();
  for (int64_t i = 0; i < B; ++i) {
    const int64_t k = idx[size_t(i)];
    TROUPE_CHECK(k >= 0 && k < N, "index ", k, " outside image set of ", N);
    std::memcpy(x + i * D, src + k * D, size_t(D) * sizeof(float));
    y[i] = labels[k];
  }
  return b;
}

window_sampler::window_sampler(int64_t corpus_size, int T, uint64_t seed)
    : positions_(corpus_size - T), rng_(seed) {
  if (T < 1 || corpus_size < int64_t(T) + 1)
    throw input_error(detail::cat("corpus of ", corpus_size, " bytes is too small for context ", T,
                                  ": expected at least ", int64_t(T) + 1, " bytes"));
}

void window_sampler::next(int64_t batch, std::vector<int64_t>& starts) {
  TROUPE_CHECK(batch >= 0, "batch=", batch);
  starts.resize(size_t(batch));
  for (int64_t& s : starts) s = int64_t(rng_.below(uint64_t(positions_)));
}

batch make_token_batch(const std::vector<uint8_t>& corpus, const std::vector<int64_t>& starts, int T) {
  const int64_t B = int64_t(starts.size()), size = int64_t(corpus.size());
  batch b{tensor::zeros({B, T}, dtype::i32), tensor::zeros({B, T}, dtype::i32)};
  int32_t* x = b.x.i32();
  int32_t* y = b.y.i32();
  for (int64_t i = 0; i < B; ++i) {
    const int64_t s = starts[size_t(i)];
    TROUPE_CHECK(s >= 0 && s + T + 1 <= size, "window start ", s, " with T=", T, " outside corpus of ", size);
    for (int t = 0; t < T; ++t) {
      x[i * T + t] = corpus[size_t(s + t)];
      y[i * T + t] = corpus[size_t(s + t + 1)];
    }
  }
  return b;
}

std::vector<int64_t> eval_windows(int64_t corpus_size, int T, int64_t count) {
  if (T < 1 || corpus_size < int64_t(T) + 1)
    throw input_error(detail::cat("validation corpus of ", corpus_size, " bytes is too small for context ", T,
                                  ": expected at least ", int64_t(T) + 1, " bytes"));
  TROUPE_CHECK(count >= 0, "count=", count);
  const int64_t last = corpus_size - T - 1;  // the last valid start
  std::vector<int64_t> starts(size_t(count), 0);
  for (int64_t i = 1; i < count; ++i)
    starts[size_t(i)] = int64_t((unsigned __int128)uint64_t(i) * uint64_t(last) / uint64_t(count - 1));
  return starts;
}

}  // namespace troupe
