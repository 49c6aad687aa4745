#include "runtime/arena.hpp"

namespace troupe {

int param_table::add(const std::string& name, const shape_t& shape, weight_decay decay) {
  int existing = find(name);
  if (existing >= 0) {
    TROUPE_CHECK(entries_[size_t(existing)].shape == shape, "tied parameter '", name, "' declared as ",
                 shape_str(shape), " and ", shape_str(entries_[size_t(existing)].shape));
    if (record_) record_->push_back(existing);
    return existing;
  }
  // Keep every parameter 16-float aligned (64 bytes) inside the arena.
  param_info p{name, shape, dtype::f32, total_, decay};
  total_ += p.padded_numel();
  entries_.push_back(std::move(p));
  if (record_) record_->push_back(int(entries_.size() - 1));
  return int(entries_.size() - 1);
}

int param_table::find(const std::string& name) const {
  for (size_t i = 0; i < entries_.size(); ++i)
    if (entries_[i].name == name) return int(i);
  return -1;
}

arena::arena(const param_table& table) : table_(&table) {
  flat_ = tensor::zeros({table.total_numel()});
  for (const auto& p : table.entries()) views_.push_back(flat_.view(p.offset, p.shape));
}

}  // namespace troupe
