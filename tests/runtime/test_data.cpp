// Data loading (Fashion-MNIST IDX files, the fortunes byte corpus) and seeded batching.
#include <doctest/doctest.h>
#include <unistd.h>  // getpid: a temp directory per test process
#include <zlib.h>    // gzopen / gzwrite: broken IDX files for the error paths

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "runtime/data.hpp"

namespace fs = std::filesystem;
using namespace troupe;

namespace {

const std::string fmnist_dir = "/usr/share/datasets/fashion-mnist";
const std::string fortunes_dir = "/usr/share/games/fortunes";

// A fresh empty directory, removed when the test ends.
struct temp_dir {
  fs::path path;
  explicit temp_dir(const std::string& tag) {
    path = fs::temp_directory_path() / ("troupe_test_data_" + tag + "_" + std::to_string(getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void put_be32(std::vector<uint8_t>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}

// An IDX file: magic, sizes, then `data_bytes` bytes of payload (value = index % 10).
std::vector<uint8_t> idx_bytes(uint32_t magic, const std::vector<uint32_t>& sizes, size_t data_bytes) {
  std::vector<uint8_t> b;
  put_be32(b, magic);
  for (uint32_t s : sizes) put_be32(b, s);
  for (size_t i = 0; i < data_bytes; ++i) b.push_back(uint8_t(i % 10));
  return b;
}

void write_gz(const std::string& path, const std::vector<uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), unsigned(bytes.size())) == int(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The error message of `f()`, which must throw input_error.
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const input_error& e) {
    return e.what();
  }
  FAIL("expected an input_error");
  return "";
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// A small valid Fashion-MNIST-shaped pair of files in `d` (n images of 2x3).
void write_small_set(const temp_dir& d, uint32_t n_images, uint32_t n_labels) {
  write_gz(d.file("train-images-idx3-ubyte.gz"), idx_bytes(2051, {n_images, 2, 3}, n_images * 6));
  write_gz(d.file("train-labels-idx1-ubyte.gz"), idx_bytes(2049, {n_labels}, n_labels));
}

}  // namespace

TEST_CASE("fashion_mnist: the real files load with the documented counts, shapes and ranges") {
  const image_set train = load_fashion_mnist(fmnist_dir, true);
  const image_set test = load_fashion_mnist(fmnist_dir, false);
  CHECK(train.size() == 60000);
  CHECK(test.size() == 10000);
  for (const image_set* s : {&train, &test}) {
    CHECK(s->rows == 28);
    CHECK(s->cols == 28);
    CHECK(s->classes == 10);
    CHECK(s->images.shape() == shape_t{s->size(), 784});
    CHECK(s->images.type() == dtype::f32);
    CHECK(s->labels.shape() == shape_t{s->size()});
    CHECK(s->labels.type() == dtype::i32);
    const float* x = s->images.f32();
    const auto [lo, hi] = std::minmax_element(x, x + s->images.numel());
    CHECK(*lo == 0.0f);
    CHECK(*hi == 1.0f);
    const int32_t* y = s->labels.i32();
    const auto [ylo, yhi] = std::minmax_element(y, y + s->size());
    CHECK(*ylo == 0);
    CHECK(*yhi == 9);
  }

  // The first training label and first image row, read straight from the gzip stream.
  gzFile f = gzopen((fmnist_dir + "/train-labels-idx1-ubyte.gz").c_str(), "rb");
  REQUIRE(f != nullptr);
  uint8_t head[9];
  REQUIRE(gzread(f, head, 9) == 9);
  gzclose(f);
  CHECK(train.labels.i32()[0] == head[8]);
  CHECK(head[8] == 9);  // Fashion-MNIST's first training image is an ankle boot
  f = gzopen((fmnist_dir + "/train-images-idx3-ubyte.gz").c_str(), "rb");
  REQUIRE(f != nullptr);
  std::vector<uint8_t> img(16 + 784);
  REQUIRE(gzread(f, img.data(), unsigned(img.size())) == int(img.size()));
  gzclose(f);
  for (int i = 0; i < 784; ++i) REQUIRE(train.images.f32()[i] == float(img[16 + size_t(i)]) / 255.0f);
}

TEST_CASE("fashion_mnist: broken files give errors that name the file and what was expected") {
  SUBCASE("truncated gzip stream") {
    temp_dir d("gz");
    const std::vector<uint8_t> whole = read_file(fmnist_dir + "/t10k-images-idx3-ubyte.gz");
    REQUIRE(whole.size() > 1000);
    std::ofstream(d.file("t10k-images-idx3-ubyte.gz"), std::ios::binary)
        .write(reinterpret_cast<const char*>(whole.data()), std::streamsize(whole.size() / 2));
    fs::copy_file(fmnist_dir + "/t10k-labels-idx1-ubyte.gz", d.file("t10k-labels-idx1-ubyte.gz"));
    const std::string msg = error_of([&] { load_fashion_mnist(d.path.string(), false); });
    CHECK(has(msg, d.file("t10k-images-idx3-ubyte.gz")));
    CHECK(has(msg, "truncated"));
  }
  SUBCASE("valid gzip, IDX data shorter than its header says") {
    temp_dir d("short");
    write_gz(d.file("train-images-idx3-ubyte.gz"), idx_bytes(2051, {10, 2, 3}, 5 * 6));
    write_gz(d.file("train-labels-idx1-ubyte.gz"), idx_bytes(2049, {10}, 10));
    const std::string msg = error_of([&] { load_fashion_mnist(d.path.string(), true); });
    CHECK(has(msg, d.file("train-images-idx3-ubyte.gz")));
    CHECK(has(msg, "promises 60 bytes"));
    CHECK(has(msg, "found 30"));
  }
  SUBCASE("wrong magic") {
    temp_dir d("magic");
    write_gz(d.file("train-images-idx3-ubyte.gz"), idx_bytes(2049, {4, 2, 3}, 24));
    write_gz(d.file("train-labels-idx1-ubyte.gz"), idx_bytes(2049, {4}, 4));
    const std::string msg = error_of([&] { load_fashion_mnist(d.path.string(), true); });
    CHECK(has(msg, d.file("train-images-idx3-ubyte.gz")));
    CHECK(has(msg, "expected 2051"));
    CHECK(has(msg, "found 2049"));
  }
  SUBCASE("image and label counts differ") {
    temp_dir d("count");
    write_small_set(d, 4, 3);
    const std::string msg = error_of([&] { load_fashion_mnist(d.path.string(), true); });
    CHECK(has(msg, d.file("train-labels-idx1-ubyte.gz")));
    CHECK(has(msg, "3 labels"));
    CHECK(has(msg, "4 images"));
  }
  SUBCASE("missing directory") {
    const std::string dir = "/nonexistent/troupe/fashion-mnist";
    const std::string msg = error_of([&] { load_fashion_mnist(dir, true); });
    CHECK(has(msg, dir + "/train-images-idx3-ubyte.gz"));
    CHECK(has(msg, "no such file"));
  }
  SUBCASE("a small valid set loads") {
    temp_dir d("ok");
    write_small_set(d, 4, 4);
    const image_set s = load_fashion_mnist(d.path.string(), true);
    CHECK(s.size() == 4);
    CHECK(s.rows == 2);
    CHECK(s.cols == 3);
    CHECK(s.labels.i32()[3] == 3);
    CHECK(s.images.f32()[7] == 7.0f / 255.0f);  // payload byte i is i % 10
  }
}

TEST_CASE("byte_corpus: fortunes files are read sorted, without .dat/.u8/symlinks, and split") {
  const byte_corpus c = load_byte_corpus(fortunes_dir, 0.1);
  REQUIRE(c.files.size() > 10);
  CHECK(std::is_sorted(c.files.begin(), c.files.end()));
  uint64_t total = 0;
  for (const std::string& name : c.files) {
    CHECK(!has(name, ".dat"));
    CHECK(!has(name, ".u8"));
    const fs::path p = fs::path(fortunes_dir) / name;
    CHECK(fs::is_regular_file(fs::symlink_status(p)));
    total += fs::file_size(p);
  }
  CHECK(c.train.size() + c.val.size() == total);
  const double val_share = double(c.val.size()) / double(total);
  CHECK(val_share == doctest::Approx(0.1).epsilon(0.001));
  // The corpus starts with the first file's bytes.
  const std::vector<uint8_t> first = read_file((fs::path(fortunes_dir) / c.files[0]).string());
  REQUIRE(c.train.size() >= first.size());
  CHECK(std::equal(first.begin(), first.end(), c.train.begin()));

  SUBCASE("a directory of our own: symlinks, .dat and subdirectories are skipped") {
    temp_dir d("corpus");
    std::ofstream(d.file("b")) << "bbbb";
    std::ofstream(d.file("a")) << "aaaaaa";
    std::ofstream(d.file("a.dat")) << "index";
    fs::create_symlink(d.file("a"), d.file("a.u8"));
    fs::create_symlink(d.file("b"), d.file("c_link"));
    fs::create_directory(d.file("sub"));
    const byte_corpus own = load_byte_corpus(d.path.string(), 0.5);
    CHECK(own.files == std::vector<std::string>{"a", "b"});
    CHECK(std::string(own.train.begin(), own.train.end()) == "aaaaa");
    CHECK(std::string(own.val.begin(), own.val.end()) == "abbbb");
  }
  SUBCASE("missing or empty directory") {
    const std::string missing = "/nonexistent/troupe/fortunes";
    std::string msg = error_of([&] { load_byte_corpus(missing); });
    CHECK(has(msg, missing));
    temp_dir d("empty");
    msg = error_of([&] { load_byte_corpus(d.path.string()); });
    CHECK(has(msg, d.path.string()));
    CHECK(has(msg, "empty"));
  }
}

TEST_CASE("epoch_sampler: each epoch is a permutation, batches repeat with the seed") {
  const int64_t n = 103, B = 10;
  CHECK(batches_per_epoch(n, B) == 10);
  CHECK(batches_per_epoch(100, 10) == 10);
  CHECK(batches_per_epoch(9, 10) == 0);

  epoch_sampler a(n, 42), b(n, 42), c(n, 43);
  std::vector<int64_t> ia, ib, ic;
  std::vector<int64_t> seen;
  bool differs = false;
  for (int step = 0; step < 10; ++step) {
    a.next(B, ia);
    b.next(B, ib);
    c.next(B, ic);
    CHECK(ia == ib);
    differs = differs || ia != ic;
    CHECK(a.epoch() == 0);
    seen.insert(seen.end(), ia.begin(), ia.end());
  }
  CHECK(differs);
  // 100 distinct indices in [0, n): the epoch's permutation, its last 3 dropped.
  std::vector<int64_t> sorted = seen;
  std::sort(sorted.begin(), sorted.end());
  CHECK(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());
  CHECK(sorted.front() >= 0);
  CHECK(sorted.back() < n);
  std::vector<int64_t> perm = a.permutation();
  CHECK(std::equal(seen.begin(), seen.end(), perm.begin()));
  std::sort(perm.begin(), perm.end());
  for (int64_t i = 0; i < n; ++i) CHECK(perm[size_t(i)] == i);

  // The 11th batch starts epoch 1 with a different order.
  const std::vector<int64_t> epoch0 = a.permutation();
  a.next(B, ia);
  CHECK(a.epoch() == 1);
  CHECK(a.position() == B);
  CHECK(a.permutation() != epoch0);
  CHECK(std::equal(ia.begin(), ia.end(), a.permutation().begin()));

  CHECK(has(error_of([&] { a.next(n + 1, ia); }), "batch size 104"));
}

TEST_CASE("image batch: rows and labels of the chosen examples, in order") {
  temp_dir d("batch");
  write_small_set(d, 5, 5);
  const image_set s = load_fashion_mnist(d.path.string(), true);
  const batch b = make_image_batch(s, {4, 0, 2});
  CHECK(b.x.shape() == shape_t{3, 6});
  CHECK(b.y.shape() == shape_t{3});
  CHECK(b.y.i32()[0] == 4);
  CHECK(b.y.i32()[1] == 0);
  CHECK(b.y.i32()[2] == 2);
  for (int j = 0; j < 6; ++j) {
    CHECK(b.x.f32()[j] == s.images.f32()[4 * 6 + j]);
    CHECK(b.x.f32()[6 + j] == s.images.f32()[j]);
  }
}

TEST_CASE("window_sampler and token batches: targets are the inputs shifted by one") {
  std::vector<uint8_t> corpus(1000);
  for (size_t i = 0; i < corpus.size(); ++i) corpus[i] = uint8_t((i * 7 + 3) % 256);
  const int T = 16;
  window_sampler a(int64_t(corpus.size()), T, 5), b(int64_t(corpus.size()), T, 5), c(int64_t(corpus.size()), T, 6);
  std::vector<int64_t> sa, sb, sc;
  bool differs = false;
  for (int step = 0; step < 50; ++step) {
    a.next(8, sa);
    b.next(8, sb);
    c.next(8, sc);
    CHECK(sa == sb);
    differs = differs || sa != sc;
    for (int64_t s : sa) {
      CHECK(s >= 0);
      CHECK(s <= int64_t(corpus.size()) - T - 1);
    }
  }
  CHECK(differs);

  const batch tb = make_token_batch(corpus, sa, T);
  CHECK(tb.x.shape() == shape_t{8, T});
  CHECK(tb.y.shape() == shape_t{8, T});
  CHECK(tb.x.type() == dtype::i32);
  for (int i = 0; i < 8; ++i) {
    for (int t = 0; t < T; ++t) {
      CHECK(tb.x.i32()[i * T + t] == corpus[size_t(sa[size_t(i)] + t)]);
      if (t + 1 < T) CHECK(tb.y.i32()[i * T + t] == tb.x.i32()[i * T + t + 1]);
    }
    CHECK(tb.y.i32()[i * T + T - 1] == corpus[size_t(sa[size_t(i)] + T)]);
  }

  // The largest start still fits its window and targets.
  const batch edge = make_token_batch(corpus, {int64_t(corpus.size()) - T - 1}, T);
  CHECK(edge.y.i32()[T - 1] == corpus.back());

  CHECK(has(error_of([&] { window_sampler(T, T, 1); }), "too small for context 16"));
}

TEST_CASE("eval_windows: fixed, evenly spaced, covering the corpus") {
  const std::vector<int64_t> w = eval_windows(1000, 16, 5);
  CHECK(w == std::vector<int64_t>{0, 245, 491, 737, 983});
  CHECK(eval_windows(1000, 16, 5) == w);
  CHECK(eval_windows(1000, 16, 1) == std::vector<int64_t>{0});
  CHECK(eval_windows(17, 16, 3) == std::vector<int64_t>{0, 0, 0});
  CHECK(has(error_of([&] { eval_windows(16, 16, 3); }), "too small"));
}
