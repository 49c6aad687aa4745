#include "runtime/tensor.hpp"

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>

namespace troupe {

size_t dtype_size(dtype t) {
  switch (t) {
    case dtype::f32: return 4;
    case dtype::i32: return 4;
    case dtype::u8: return 1;
  }
  return 0;
}

const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::i32: return "i32";
    case dtype::u8: return "u8";
  }
  return "?";
}

namespace {

// Freed host blocks by rounded size. Never shrinks: the working set of a training job
// is the same every step, so what is cached is what the next step needs.
struct block_cache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> free_blocks;

  void* take(size_t rounded) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = free_blocks.find(rounded);
      if (it != free_blocks.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        return p;
      }
    }
    void* p = std::aligned_alloc(64, rounded);
    TROUPE_CHECK(p != nullptr, "out of memory allocating ", rounded, " bytes");
    return p;
  }
  void give(void* p, size_t rounded) {
    std::lock_guard<std::mutex> lock(mu);
    free_blocks[rounded].push_back(p);
  }
};

block_cache& host_cache() {
  static auto* cache = new block_cache;  // leaked on purpose: outlives every static tensor
  return *cache;
}

size_t rounded_size(size_t bytes) { return bytes == 0 ? 64 : (bytes + 63) / 64 * 64; }

}  // namespace

storage::storage(size_t bytes, device dev, init how) : bytes_(bytes), dev_(dev) {
  data_ = host_cache().take(rounded_size(bytes));
  if (how == init::zero) std::memset(data_, 0, rounded_size(bytes));
}

storage::~storage() { host_cache().give(data_, rounded_size(bytes_)); }

int64_t numel_of(const shape_t& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const shape_t& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ',';  // (const char* + string trips GCC 12's -Wrestrict false positive)
    s += std::to_string(shape[i]);
  }
  return s + ")";
}

static tensor make_tensor(const shape_t& shape, dtype t, device dev, storage::init how) {
  for (int64_t d : shape) TROUPE_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  return tensor::wrap(std::make_shared<storage>(size_t(numel_of(shape)) * dtype_size(t), dev, how), shape, t);
}

tensor tensor::wrap(std::shared_ptr<storage> s, const shape_t& shape, dtype t) {
  tensor x;
  x.storage_ = std::move(s);
  x.shape_ = shape;
  x.dtype_ = t;
  return x;
}

tensor tensor::zeros(const shape_t& shape, dtype t, device dev) {
  return make_tensor(shape, t, dev, storage::init::zero);
}

tensor tensor::empty(const shape_t& shape, dtype t, device dev) {
  return make_tensor(shape, t, dev, storage::init::uninitialized);
}

void* tensor::raw() {
  TROUPE_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * int64_t(dtype_size(dtype_));
}
const void* tensor::raw() const { return const_cast<tensor*>(this)->raw(); }

float* tensor::f32() {
  TROUPE_CHECK(dtype_ == dtype::f32, "tensor is ", dtype_name(dtype_), ", not f32");
  return static_cast<float*>(raw());
}
const float* tensor::f32() const { return const_cast<tensor*>(this)->f32(); }
int32_t* tensor::i32() {
  TROUPE_CHECK(dtype_ == dtype::i32, "tensor is ", dtype_name(dtype_), ", not i32");
  return static_cast<int32_t*>(raw());
}
const int32_t* tensor::i32() const { return const_cast<tensor*>(this)->i32(); }
uint8_t* tensor::u8() {
  TROUPE_CHECK(dtype_ == dtype::u8, "tensor is ", dtype_name(dtype_), ", not u8");
  return static_cast<uint8_t*>(raw());
}
const uint8_t* tensor::u8() const { return const_cast<tensor*>(this)->u8(); }

tensor tensor::view(int64_t offset, const shape_t& shape) const {
  TROUPE_CHECK(offset >= 0 && offset + numel_of(shape) <= numel(), "view ", offset, "+", shape_str(shape),
               " out of range of tensor ", shape_str(shape_));
  tensor v = *this;
  v.offset_ = offset_ + offset;
  v.shape_ = shape;
  return v;
}

tensor tensor::reshape(const shape_t& shape) const {
  TROUPE_CHECK(numel_of(shape) == numel(), "reshape ", shape_str(shape_), " to ", shape_str(shape));
  return view(0, shape);
}

tensor tensor::slice_rows(int64_t begin, int64_t end) const {
  TROUPE_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "rows [", begin, ",", end,
               ") of ", shape_str(shape_));
  shape_t s = shape_;
  s[0] = end - begin;
  return view(begin * (numel() / (shape_[0] ? shape_[0] : 1)), s);
}

tensor tensor::clone() const {
  tensor c = empty(shape_, dtype_, dev());  // every element is written below
  c.copy_from(*this);
  return c;
}

void tensor::zero() {
  if (numel()) std::memset(raw(), 0, bytes());
}

void tensor::copy_from(const tensor& src) {
  TROUPE_CHECK(src.numel() == numel() && src.dtype_ == dtype_, "copy ", shape_str(src.shape_), " ",
               dtype_name(src.dtype_), " into ", shape_str(shape_), " ", dtype_name(dtype_));
  if (numel()) std::memmove(raw(), src.raw(), bytes());
}

}  // namespace troupe
