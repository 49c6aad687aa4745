#pragma once
// Tensor: dtype, shape, device and reference-counted storage. A tensor is a view
// (element offset + shape) into a storage; copying a tensor copies the reference,
// never the data. Contiguous row-major only: views slice along flat offsets.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/check.hpp"

namespace troupe {

enum class dtype : uint8_t { f32, i32, u8 };  // bf16 joins here with its kernels

size_t dtype_size(dtype t);
const char* dtype_name(dtype t);

enum class device_kind : uint8_t { cpu };  // cuda joins with the CUDA backend

struct device {
  device_kind kind = device_kind::cpu;
  int index = 0;
  bool operator==(const device&) const = default;
};

// A block of bytes owned by one device, 64-byte aligned. Blocks come from and return
// to a per-size cache: a training step allocates the same activation sizes every time,
// and fresh pages cost a fault each (shared/STACK.md §8: first-touch is ~2 GB/s here).
class storage {
 public:
  enum class init : uint8_t { zero, uninitialized };
  storage(size_t bytes, device dev, init how = init::zero);
  ~storage();
  storage(const storage&) = delete;
  storage& operator=(const storage&) = delete;
  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  device dev() const { return dev_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  device dev_;
};

using shape_t = std::vector<int64_t>;

int64_t numel_of(const shape_t& shape);
std::string shape_str(const shape_t& shape);

class tensor {
 public:
  tensor() = default;
  // A fresh zero-filled tensor.
  static tensor zeros(const shape_t& shape, dtype t = dtype::f32, device dev = {});
  // A fresh tensor whose contents are undefined: for outputs a kernel overwrites whole.
  static tensor empty(const shape_t& shape, dtype t = dtype::f32, device dev = {});
  // A tensor over the whole of an existing storage.
  static tensor wrap(std::shared_ptr<storage> s, const shape_t& shape, dtype t);

  bool defined() const { return storage_ != nullptr; }
  const shape_t& shape() const { return shape_; }
  int64_t dim(size_t i) const { return shape_.at(i); }
  size_t ndim() const { return shape_.size(); }
  int64_t numel() const { return numel_of(shape_); }
  dtype type() const { return dtype_; }
  device dev() const { return storage_ ? storage_->dev() : device{}; }
  size_t bytes() const { return size_t(numel()) * dtype_size(dtype_); }
  // How many tensors share this storage (for tests of zero-copy paths).
  long use_count() const { return storage_.use_count(); }
  const storage* storage_ptr() const { return storage_.get(); }

  // Typed access; checks the dtype.
  float* f32();
  const float* f32() const;
  int32_t* i32();
  const int32_t* i32() const;
  uint8_t* u8();
  const uint8_t* u8() const;
  void* raw();
  const void* raw() const;

  // A view of `shape` starting `offset` elements into this tensor; shares storage.
  tensor view(int64_t offset, const shape_t& shape) const;
  // Same elements, new shape (numel must match); shares storage.
  tensor reshape(const shape_t& shape) const;
  // Rows [begin, end) along the first dimension; shares storage.
  tensor slice_rows(int64_t begin, int64_t end) const;
  // A deep copy into fresh storage.
  tensor clone() const;
  void zero();
  void copy_from(const tensor& src);  // same numel and dtype

 private:
  std::shared_ptr<storage> storage_;
  int64_t offset_ = 0;  // in elements
  shape_t shape_;
  dtype dtype_ = dtype::f32;
};

}  // namespace troupe
