#pragma once
// Parameters, gradients and optimizer state each live in one contiguous arena described
// by one table of (name, shape, dtype). Gradients mirror the parameter layout, so a
// single flat buffer is what gets all-reduced, checkpointed or sharded by offset.
#include <string>
#include <vector>

#include "runtime/tensor.hpp"

namespace troupe {

enum class weight_decay : uint8_t { apply, skip };  // skip: biases and LayerNorm

struct param_info {
  std::string name;
  shape_t shape;
  dtype type = dtype::f32;
  int64_t offset = 0;  // in elements, from the arena's start
  weight_decay decay = weight_decay::apply;
  int64_t numel() const { return numel_of(shape); }
  int64_t padded_numel() const { return (numel() + 15) / 16 * 16; }  // its room in the arena
};

class param_table {
 public:
  // Registers a parameter and returns its index. A name already present is shared
  // (weight tying) if the shape matches, and is an error otherwise.
  int add(const std::string& name, const shape_t& shape, weight_decay decay);
  int find(const std::string& name) const;  // -1 if absent
  // While set, add() also appends each index it returns (new or shared) to *out: how a
  // caller learns which parameters one layer's declare() touches.
  void record_into(std::vector<int>* out) { record_ = out; }
  const param_info& at(int i) const { return entries_.at(size_t(i)); }
  const std::vector<param_info>& entries() const { return entries_; }
  int64_t total_numel() const { return total_; }

 private:
  std::vector<param_info> entries_;
  int64_t total_ = 0;
  std::vector<int>* record_ = nullptr;
};

// One flat f32 buffer laid out by a table; get(i) is a view, never a copy.
class arena {
 public:
  arena() = default;
  explicit arena(const param_table& table);
  tensor get(int i) const { return views_.at(size_t(i)); }
  float* ptr(int i) { return views_.at(size_t(i)).f32(); }
  const float* ptr(int i) const { return views_.at(size_t(i)).f32(); }
  tensor& flat() { return flat_; }
  const tensor& flat() const { return flat_; }
  const param_table& table() const { return *table_; }
  void zero() { flat_.zero(); }

 private:
  const param_table* table_ = nullptr;
  tensor flat_;
  std::vector<tensor> views_;
};

}  // namespace troupe
